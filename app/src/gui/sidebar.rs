//! The left panel: conversations (new, search, rename, delete) and the model in use.

use super::app::Action;
use super::conversation::Conversation;
use super::engine_link::ModelState;
use super::format;

#[derive(Default)]
pub struct Sidebar {
    pub search: String,
    /// The conversation being renamed and the name typed so far.
    renaming: Option<(String, String)>,
    /// The conversation waiting for delete confirmation.
    confirm_delete: Option<String>,
}

impl Sidebar {
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        conversations: &[Conversation],
        selected: Option<&str>,
        model: &ModelState,
        actions: &mut Vec<Action>,
    ) {
        ui.add_space(6.0);
        if ui
            .add_sized(
                [ui.available_width(), 30.0],
                egui::Button::new("➕ New chat"),
            )
            .on_hover_text("Start a new conversation (Ctrl+N)")
            .clicked()
        {
            actions.push(Action::NewConversation);
        }
        ui.add_space(4.0);
        ui.add(
            egui::TextEdit::singleline(&mut self.search)
                .hint_text("🔍 Search chats")
                .desired_width(f32::INFINITY),
        );
        ui.add_space(4.0);

        // The model section is pinned to the bottom; the list takes the rest.
        egui::Panel::bottom("sidebar-model")
            .frame(egui::Frame::new().inner_margin(egui::Margin::symmetric(0, 8)))
            .show(ui, |ui| model_section(ui, model, actions));

        let query = self.search.trim().to_lowercase();
        let now = format::now_unix();
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .show(ui, |ui| {
                let mut shown = 0;
                for c in conversations.iter().filter(|c| c.matches(&query)) {
                    shown += 1;
                    self.row(ui, c, selected == Some(c.id.as_str()), now, actions);
                }
                if shown == 0 {
                    ui.add_space(8.0);
                    ui.weak(if query.is_empty() {
                        "No conversations yet."
                    } else {
                        "No chat matches the search."
                    });
                }
            });
    }

    fn row(
        &mut self,
        ui: &mut egui::Ui,
        c: &Conversation,
        is_selected: bool,
        now: u64,
        actions: &mut Vec<Action>,
    ) {
        if let Some((id, name)) = &mut self.renaming
            && *id == c.id
        {
            let edit = ui.add(
                egui::TextEdit::singleline(name)
                    .desired_width(f32::INFINITY)
                    .hint_text("Chat name"),
            );
            edit.request_focus();
            let enter = ui.input(|i| i.key_pressed(egui::Key::Enter));
            let escape = ui.input(|i| i.key_pressed(egui::Key::Escape));
            if escape {
                self.renaming = None;
            } else if enter || edit.lost_focus() {
                let title = name.trim().to_string();
                if !title.is_empty() {
                    actions.push(Action::RenameConversation {
                        id: c.id.clone(),
                        title,
                    });
                }
                self.renaming = None;
            }
            return;
        }
        if self.confirm_delete.as_deref() == Some(c.id.as_str()) {
            egui::Frame::new()
                .fill(ui.visuals().faint_bg_color)
                .inner_margin(4)
                .corner_radius(4.0)
                .show(ui, |ui| {
                    ui.label(format!("Delete “{}”?", c.title));
                    ui.horizontal(|ui| {
                        if ui.button("🗑 Delete").clicked() {
                            actions.push(Action::DeleteConversation(c.id.clone()));
                            self.confirm_delete = None;
                        }
                        if ui.button("Cancel").clicked() {
                            self.confirm_delete = None;
                        }
                    });
                });
            return;
        }
        // Right to left: the buttons take their size, the title the rest, so the row
        // never asks the panel to grow.
        let response = ui
            .allocate_ui_with_layout(
                egui::vec2(ui.available_width(), 28.0),
                egui::Layout::right_to_left(egui::Align::Center),
                |ui| {
                    if ui.small_button("🗑").on_hover_text("Delete").clicked() {
                        self.confirm_delete = Some(c.id.clone());
                    }
                    if ui.small_button("✏").on_hover_text("Rename").clicked() {
                        self.renaming = Some((c.id.clone(), c.title.clone()));
                    }
                    // The title on the left, then empty space up to the buttons.
                    ui.add(
                        egui::Button::selectable(
                            is_selected,
                            (egui::Atom::from(c.title.as_str()), egui::Atom::grow()),
                        )
                        .truncate()
                        .min_size(egui::vec2(ui.available_width(), 28.0)),
                    )
                    .on_hover_text(format!(
                        "{} · {} messages · {}",
                        c.title,
                        c.messages.len(),
                        format::ago(c.updated_unix, now)
                    ))
                },
            )
            .inner;
        if response.clicked() {
            actions.push(Action::SelectConversation(c.id.clone()));
        }
        response.context_menu(|ui| {
            if ui.button("✏ Rename").clicked() {
                self.renaming = Some((c.id.clone(), c.title.clone()));
            }
            if ui.button("🗑 Delete").clicked() {
                self.confirm_delete = Some(c.id.clone());
            }
        });
    }
}

fn model_section(ui: &mut egui::Ui, model: &ModelState, actions: &mut Vec<Action>) {
    ui.label(egui::RichText::new("MODEL").small().weak());
    match model {
        ModelState::None => {
            ui.label("No model loaded");
        }
        ModelState::Loading {
            path,
            stage,
            fraction,
            ..
        } => {
            ui.label(format!("Loading {}", short_name(path)));
            ui.add(
                egui::ProgressBar::new(*fraction)
                    .text(format!("{stage} · {:.0}%", fraction * 100.0))
                    .animate(true),
            );
        }
        ModelState::Ready(info) => {
            ui.label(egui::RichText::new(short_name(&info.path)).strong());
            ui.add(
                egui::Label::new(
                    egui::RichText::new(format!(
                        "{} · {} params · {}",
                        info.family,
                        format::count(info.params),
                        info.backend
                    ))
                    .weak(),
                )
                .truncate(),
            );
        }
    }
    ui.add_space(4.0);
    if ui
        .add_sized([ui.available_width(), 28.0], egui::Button::new("🗁 Models…"))
        .on_hover_text("Open, scan for and load models")
        .clicked()
    {
        actions.push(Action::OpenModelPicker);
    }
}

/// A model's folder or file name.
pub fn short_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
