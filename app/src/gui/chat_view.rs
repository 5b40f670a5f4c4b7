//! The conversation: messages with markdown, images (click for a larger view), per-message
//! actions (copy, edit and resend the last question, regenerate the last answer), and the
//! answer being written.

use std::time::Instant;

use egui_commonmark::{CommonMarkCache, CommonMarkViewer};
use pocketvlm_engine::{Role, StopReason};

use super::app::Action;
use super::composer::fit_size;
use super::conversation::{ChatMessage, Conversation};
use super::engine_link::ModelState;
use super::format;
use super::images::{Images, THUMB_SIDE, Texture, VIEW_SIDE};

/// The answer being written.
pub struct Pending {
    pub conversation: String,
    pub text: String,
    pub started: Instant,
    /// Set when the engine has tokenised the prompt.
    pub prompt_tokens: Option<usize>,
    pub tokens: usize,
    /// The user asked to stop; the engine will finish the turn within a step.
    pub stopping: bool,
}

#[derive(Default)]
pub struct ChatView {
    markdown: CommonMarkCache,
    /// The message being edited (its index) and the edited text.
    editing: Option<(usize, String)>,
    /// The stored image shown large.
    viewing: Option<String>,
}

pub struct ChatContext<'a> {
    pub conversation: Option<&'a Conversation>,
    pub pending: Option<&'a Pending>,
    pub model: &'a ModelState,
    pub busy: bool,
}

impl ChatView {
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        cx: ChatContext,
        images: &mut Images,
        actions: &mut Vec<Action>,
    ) {
        let messages: &[ChatMessage] = cx.conversation.map_or(&[], |c| &c.messages);
        let pending = cx
            .pending
            .filter(|p| Some(p.conversation.as_str()) == cx.conversation.map(|c| c.id.as_str()));
        if messages.is_empty() && pending.is_none() {
            welcome(ui, cx.model, actions);
        } else {
            egui::ScrollArea::vertical()
                .id_salt("chat-scroll")
                .stick_to_bottom(true)
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    ui.add_space(8.0);
                    let last_user = messages.iter().rposition(|m| m.role == Role::User);
                    let last = messages.len().checked_sub(1);
                    for (i, m) in messages.iter().enumerate() {
                        ui.push_id(("message", i), |ui| {
                            let is_last_user = Some(i) == last_user && pending.is_none();
                            let is_last_answer =
                                Some(i) == last && m.role == Role::Assistant && pending.is_none();
                            self.message_ui(
                                ui,
                                i,
                                m,
                                is_last_user,
                                is_last_answer,
                                cx.busy,
                                images,
                                actions,
                            );
                        });
                        ui.add_space(10.0);
                    }
                    if let Some(p) = pending {
                        let has_images = messages.last().is_some_and(|m| !m.images.is_empty());
                        self.pending_ui(ui, p, has_images);
                    }
                    ui.add_space(8.0);
                });
        }
        self.viewer_ui(ui.ctx(), images);
    }

    #[allow(clippy::too_many_arguments)]
    fn message_ui(
        &mut self,
        ui: &mut egui::Ui,
        index: usize,
        m: &ChatMessage,
        is_last_user: bool,
        is_last_answer: bool,
        busy: bool,
        images: &mut Images,
        actions: &mut Vec<Action>,
    ) {
        let user = m.role == Role::User;
        let frame = if user {
            egui::Frame::new()
                .fill(ui.visuals().faint_bg_color)
                .stroke(ui.visuals().widgets.noninteractive.bg_stroke)
        } else {
            egui::Frame::new()
        };
        frame
            .corner_radius(8.0)
            .inner_margin(egui::Margin::symmetric(12, 8))
            .show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.horizontal(|ui| {
                    ui.label(
                        egui::RichText::new(match m.role {
                            Role::User => "You",
                            Role::Assistant => "Assistant",
                            Role::System => "System",
                        })
                        .strong(),
                    );
                    if let Some(model) = &m.model {
                        ui.weak(format!("· {model}"));
                    }
                });
                if !m.images.is_empty() {
                    image_strip(ui, &m.images, images, &mut self.viewing);
                }
                if let Some((_, text)) = self.editing.as_mut().filter(|e| e.0 == index) {
                    ui.add(
                        egui::TextEdit::multiline(text)
                            .hint_text("Edit your message")
                            .desired_width(f32::INFINITY)
                            .desired_rows(3),
                    );
                    let mut done = false;
                    ui.horizontal(|ui| {
                        if ui
                            .add_enabled(!busy, egui::Button::new("Send edited"))
                            .clicked()
                        {
                            actions.push(Action::EditAndResend {
                                index,
                                text: text.clone(),
                            });
                            done = true;
                        } else if ui.button("Cancel").clicked() {
                            done = true;
                        }
                    });
                    if done {
                        self.editing = None;
                    }
                    return;
                }
                let text = displayable(&m.text);
                if user {
                    ui.add(egui::Label::new(text.as_ref()).selectable(true).wrap());
                } else if m.text.is_empty() {
                    ui.weak("(no text)");
                } else {
                    CommonMarkViewer::new().show(ui, &mut self.markdown, &text);
                }
                ui.horizontal(|ui| {
                    if let Some(metrics) = &m.metrics {
                        ui.weak(format!(
                            "{} tok · {} · first token {}",
                            metrics.generated_tokens,
                            format::rate(metrics.decode_tok_s()),
                            format::ms(metrics.ttft_ms)
                        ));
                    }
                    if let Some(stop) = m.stop
                        && stop != StopReason::Eos
                    {
                        ui.weak(match stop {
                            StopReason::Cancelled => "· stopped",
                            StopReason::MaxTokens => "· hit the token limit",
                            StopReason::ContextFull => "· context full",
                            StopReason::Eos => "",
                        });
                    }
                    if ui
                        .small_button("🗐 Copy")
                        .on_hover_text("Copy the message text")
                        .clicked()
                    {
                        actions.push(Action::CopyText(m.text.clone()));
                    }
                    if is_last_user
                        && ui
                            .add_enabled(!busy, egui::Button::new("✏ Edit").small())
                            .on_hover_text("Edit this message and ask again")
                            .clicked()
                    {
                        self.editing = Some((index, m.text.clone()));
                    }
                    if is_last_answer
                        && ui
                            .add_enabled(!busy, egui::Button::new("⟳ Regenerate").small())
                            .on_hover_text("Write this answer again")
                            .clicked()
                    {
                        actions.push(Action::Regenerate);
                    }
                });
            });
    }

    fn pending_ui(&mut self, ui: &mut egui::Ui, p: &Pending, has_images: bool) {
        egui::Frame::new()
            .inner_margin(egui::Margin::symmetric(12, 8))
            .show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.horizontal(|ui| {
                    ui.strong("Assistant");
                    ui.spinner();
                    let secs = p.started.elapsed().as_secs_f32();
                    let status = if p.stopping {
                        "stopping…".to_string()
                    } else if p.tokens > 0 {
                        format!("writing… {} tokens, {secs:.1} s", p.tokens)
                    } else if p.prompt_tokens.is_none() {
                        "preparing the prompt…".to_string()
                    } else if has_images {
                        format!("looking at the image… {secs:.1} s")
                    } else {
                        format!("reading the prompt… {secs:.1} s")
                    };
                    ui.weak(status);
                });
                if !p.text.is_empty() {
                    CommonMarkViewer::new().show(ui, &mut self.markdown, &displayable(&p.text));
                }
            });
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(250));
    }

    fn viewer_ui(&mut self, ctx: &egui::Context, images: &mut Images) {
        let Some(name) = self.viewing.clone() else {
            return;
        };
        let modal = egui::Modal::new(egui::Id::unique("image-viewer")).show(ctx, |ui| {
            let screen = ctx.content_rect().size();
            let max = egui::vec2(screen.x * 0.85, screen.y * 0.8);
            match images.texture(&name, VIEW_SIDE) {
                Texture::Ready(t) => {
                    let size = t.size_vec2();
                    let scale = (max.x / size.x).min(max.y / size.y).min(1.0);
                    ui.add(egui::Image::new((t.id(), size * scale)).alt_text("full-size image"));
                }
                Texture::Pending => {
                    ui.spinner();
                }
                Texture::Failed(e) => {
                    ui.colored_label(ui.visuals().error_fg_color, format!("⚠ {e}"));
                }
            }
            ui.horizontal(|ui| {
                if ui.button("Close").clicked() {
                    ui.close();
                }
            });
        });
        if modal.should_close() {
            self.viewing = None;
        }
    }
}

/// Text as it can be drawn: line breaks as `\n` (a lone `\r` would move the text layout
/// back to the start of the line), and no other control characters.
pub fn displayable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    std::borrow::Cow::Owned(
        text.chars()
            .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
            .collect(),
    )
}

/// Thumbnails of a message's images; a click opens the large view.
fn image_strip(
    ui: &mut egui::Ui,
    names: &[String],
    images: &mut Images,
    viewing: &mut Option<String>,
) {
    ui.horizontal_wrapped(|ui| {
        for name in names {
            let side = 120.0;
            match images.texture(name, THUMB_SIDE) {
                Texture::Ready(t) => {
                    let size = fit_size(t.size_vec2(), side);
                    let r = ui
                        .add(
                            egui::Image::new((t.id(), size))
                                .corner_radius(4.0)
                                .sense(egui::Sense::click())
                                .alt_text("image in message"),
                        )
                        .on_hover_text("Click to enlarge");
                    if r.clicked() {
                        *viewing = Some(name.clone());
                    }
                }
                Texture::Pending => {
                    ui.add_sized([side, side * 0.75], egui::Spinner::new());
                }
                Texture::Failed(e) => {
                    ui.colored_label(ui.visuals().error_fg_color, "⚠ image missing")
                        .on_hover_text(e.as_str());
                }
            }
        }
    });
}

fn welcome(ui: &mut egui::Ui, model: &ModelState, actions: &mut Vec<Action>) {
    ui.vertical_centered(|ui| {
        ui.add_space(ui.available_height() * 0.25);
        ui.label(egui::RichText::new("PocketVLM").size(28.0).strong());
        ui.add_space(6.0);
        match model {
            ModelState::None => {
                ui.label("Chat with small vision-language models, on this computer.");
                ui.add_space(12.0);
                if ui
                    .add(egui::Button::new("Choose a model…").min_size(egui::vec2(180.0, 32.0)))
                    .clicked()
                {
                    actions.push(Action::OpenModelPicker);
                }
            }
            ModelState::Loading { stage, .. } => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Loading the model: {stage}…"));
                });
            }
            ModelState::Ready(info) => {
                let name = super::sidebar::short_name(&info.path);
                if info.image_tokens.is_some() {
                    ui.label(format!(
                        "Ask {name} anything. Drop an image onto the window, paste one, or attach it with 📎 to ask about it."
                    ));
                } else {
                    ui.label(format!("Ask {name} anything."));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::displayable;

    #[test]
    fn carriage_returns_become_line_breaks_and_controls_go() {
        assert_eq!(displayable("a\r\nb\rc\u{7}d\te"), "a\nb\ncd\te");
        assert!(matches!(
            displayable("plain\ntext"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
