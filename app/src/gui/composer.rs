//! The message box at the bottom: attachments (thumbnails with remove buttons), the text,
//! attach / send / stop. Enter sends, Shift+Enter starts a new line.

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::app::Action;
use super::demo;
use super::images::{Images, Source, THUMB_SIDE, Texture};

pub const COMPOSER_ID: &str = "composer-text";

/// An image on its way into the next message.
pub struct Attachment {
    pub id: u64,
    pub name: String,
    /// The stored file's name once imported.
    pub stored: Option<String>,
}

#[derive(Default)]
pub struct Composer {
    pub text: String,
    pub attachments: Vec<Attachment>,
    next_id: u64,
    dialog: Option<Receiver<Vec<PathBuf>>>,
}

impl Composer {
    /// Adds an attachment and starts importing it.
    pub fn attach(&mut self, images: &Images, source: Source) {
        self.next_id += 1;
        let id = self.next_id;
        self.attachments.push(Attachment {
            id,
            name: source.display_name(),
            stored: None,
        });
        images.import(id, source);
    }

    /// An import finished.
    pub fn imported(&mut self, id: u64, stored: String) {
        if let Some(a) = self.attachments.iter_mut().find(|a| a.id == id) {
            a.stored = Some(stored);
        }
    }

    /// An import failed: the attachment goes (the caller reports why).
    pub fn import_failed(&mut self, id: u64) {
        self.attachments.retain(|a| a.id != id);
    }

    pub fn is_importing(&self) -> bool {
        self.attachments.iter().any(|a| a.stored.is_none())
    }

    /// The stored names of the attachments, emptying the composer.
    pub fn take(&mut self) -> (String, Vec<String>) {
        let images = self
            .attachments
            .drain(..)
            .filter_map(|a| a.stored)
            .collect();
        (std::mem::take(&mut self.text), images)
    }

    pub fn poll(&mut self) -> Vec<PathBuf> {
        if let Some(rx) = &self.dialog
            && let Ok(paths) = rx.try_recv()
        {
            self.dialog = None;
            return paths;
        }
        Vec::new()
    }

    pub fn focus(&self, ctx: &egui::Context) {
        ctx.memory_mut(|m| m.request_focus(egui::Id::unique(COMPOSER_ID)));
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        images: &mut Images,
        generating: bool,
        can_send: bool,
        offer_samples: bool,
        actions: &mut Vec<Action>,
    ) {
        if !self.attachments.is_empty() {
            self.attachments_ui(ui, images);
            ui.add_space(4.0);
        } else if offer_samples {
            self.samples_ui(ui, images);
            ui.add_space(4.0);
        }
        let id = egui::Id::unique(COMPOSER_ID);
        ui.horizontal(|ui| {
            if ui
                .add_sized([36.0, 36.0], egui::Button::new("📎"))
                .on_hover_text("Attach images")
                .clicked()
            {
                self.pick_images(ui.ctx());
            }
            let button_width = 84.0;
            let edit = egui::TextEdit::multiline(&mut self.text)
                .id(id)
                .hint_text("Message PocketVLM… (Enter to send, Shift+Enter for a new line)")
                .desired_rows(2)
                .desired_width(ui.available_width() - button_width - 8.0)
                .return_key(egui::KeyboardShortcut::new(
                    egui::Modifiers::SHIFT,
                    egui::Key::Enter,
                ));
            let response = egui::ScrollArea::vertical()
                .id_salt("composer-scroll")
                .max_height(160.0)
                .show(ui, |ui| ui.add(edit))
                .inner;
            let enter = response.has_focus()
                && ui.input(|i| i.key_pressed(egui::Key::Enter) && !i.modifiers.shift);
            if generating {
                if ui
                    .add_sized([button_width, 36.0], egui::Button::new("⏹ Stop"))
                    .on_hover_text("Stop the answer (Esc)")
                    .clicked()
                    || ui.input(|i| i.key_pressed(egui::Key::Escape))
                {
                    actions.push(Action::Stop);
                }
            } else {
                let has_content = !self.text.trim().is_empty() || !self.attachments.is_empty();
                let send = ui
                    .add_enabled(
                        can_send && has_content,
                        egui::Button::new("Send").min_size(egui::vec2(button_width, 36.0)),
                    )
                    .on_hover_text("Send (Enter)");
                if send.clicked() || (enter && can_send && has_content) {
                    actions.push(Action::Send);
                }
            }
        });
    }

    /// One button per bundled sample scene: attaches it and suggests a question.
    fn samples_ui(&mut self, ui: &mut egui::Ui, images: &Images) {
        ui.horizontal_wrapped(|ui| {
            ui.weak("Try a sample image:");
            for sample in &demo::SAMPLES {
                if ui
                    .small_button(format!("🖼 {}", sample.name))
                    .on_hover_text(format!(
                        "Attach {} and ask: {}",
                        sample.name, sample.question
                    ))
                    .clicked()
                {
                    let source = Source::Bytes {
                        name: sample.name.to_string(),
                        bytes: Arc::new(sample.png.to_vec()),
                    };
                    self.attach(images, source);
                    if self.text.trim().is_empty() {
                        self.text = sample.question.to_string();
                    }
                }
            }
        });
    }

    fn attachments_ui(&mut self, ui: &mut egui::Ui, images: &mut Images) {
        let mut remove = None;
        ui.horizontal_wrapped(|ui| {
            for a in &self.attachments {
                let side = 64.0;
                egui::Frame::group(ui.style())
                    .inner_margin(2)
                    .show(ui, |ui| {
                        ui.vertical(|ui| {
                            match a.stored.as_deref().map(|s| images.texture(s, THUMB_SIDE)) {
                                Some(Texture::Ready(t)) => {
                                    let size = fit_size(t.size_vec2(), side);
                                    ui.add(
                                        egui::Image::new((t.id(), size))
                                            .alt_text(format!("attached image {}", a.name)),
                                    )
                                    .on_hover_text(&a.name);
                                }
                                Some(Texture::Failed(e)) => {
                                    ui.colored_label(ui.visuals().error_fg_color, "⚠")
                                        .on_hover_text(e.as_str());
                                }
                                _ => {
                                    ui.add_sized([side, side], egui::Spinner::new());
                                }
                            }
                            if ui
                                .small_button("✖ Remove")
                                .on_hover_text(format!("Remove {}", a.name))
                                .clicked()
                            {
                                remove = Some(a.id);
                            }
                        });
                    });
            }
        });
        if let Some(id) = remove {
            self.attachments.retain(|a| a.id != id);
        }
    }

    fn pick_images(&mut self, ctx: &egui::Context) {
        if self.dialog.is_some() {
            return;
        }
        let run = || {
            rfd::FileDialog::new()
                .set_title("Attach images")
                .add_filter("Images", &["png", "jpg", "jpeg", "gif", "bmp", "webp"])
                .pick_files()
                .unwrap_or_default()
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        if cfg!(target_os = "macos") {
            let _ = tx.send(run());
        } else {
            let ctx = ctx.clone();
            let _ = std::thread::Builder::new()
                .name("pocketvlm-dialog".into())
                .spawn(move || {
                    let _ = tx.send(run());
                    ctx.request_repaint();
                });
        }
        self.dialog = Some(rx);
    }
}

/// `size` scaled to fit a `side × side` square.
pub fn fit_size(size: egui::Vec2, side: f32) -> egui::Vec2 {
    let long = size.x.max(size.y).max(1.0);
    size * (side / long)
}
