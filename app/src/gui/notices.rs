//! Messages for the user across the top of the chat: errors stay until dismissed, notes
//! fade after a few seconds.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Info,
}

#[derive(Clone, Debug)]
pub struct Notice {
    pub level: Level,
    pub text: String,
    created: Instant,
}

const INFO_LIFETIME: Duration = Duration::from_secs(6);

#[derive(Default)]
pub struct Notices {
    pub items: Vec<Notice>,
}

impl Notices {
    pub fn push(&mut self, level: Level, text: impl Into<String>) {
        let text = text.into();
        // The same message twice in a row (a repeated failing action) shows once.
        if self.items.last().is_some_and(|n| n.text == text) {
            return;
        }
        self.items.push(Notice {
            level,
            text,
            created: Instant::now(),
        });
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.push(Level::Error, text);
    }

    pub fn warn(&mut self, text: impl Into<String>) {
        self.push(Level::Warning, text);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push(Level::Info, text);
    }

    pub fn errors(&self) -> impl Iterator<Item = &Notice> {
        self.items.iter().filter(|n| n.level == Level::Error)
    }

    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.items
            .retain(|n| n.level != Level::Info || n.created.elapsed() < INFO_LIFETIME);
        if self.items.iter().any(|n| n.level == Level::Info) {
            ui.ctx().request_repaint_after(Duration::from_millis(500));
        }
        let mut dismissed = None;
        for (i, n) in self.items.iter().enumerate() {
            let (fill, stroke, icon) = match n.level {
                Level::Error => (
                    egui::Color32::from_rgb(80, 24, 24),
                    egui::Color32::from_rgb(220, 90, 90),
                    "⚠",
                ),
                Level::Warning => (
                    egui::Color32::from_rgb(70, 56, 16),
                    egui::Color32::from_rgb(220, 180, 60),
                    "⚠",
                ),
                Level::Info => (
                    egui::Color32::from_rgb(24, 48, 72),
                    egui::Color32::from_rgb(90, 150, 220),
                    "ℹ",
                ),
            };
            egui::Frame::new()
                .fill(fill)
                .stroke(egui::Stroke::new(1.0, stroke))
                .corner_radius(6.0)
                .inner_margin(egui::Margin::symmetric(10, 6))
                .show(ui, |ui| {
                    ui.set_width(ui.available_width());
                    ui.horizontal(|ui| {
                        ui.colored_label(stroke, icon);
                        if ui
                            .add(egui::Button::new("✖").frame(false))
                            .on_hover_text("Dismiss")
                            .clicked()
                        {
                            dismissed = Some(i);
                        }
                        ui.add(
                            egui::Label::new(
                                egui::RichText::new(&n.text).color(egui::Color32::WHITE),
                            )
                            .wrap(),
                        );
                    });
                });
        }
        if let Some(i) = dismissed {
            self.items.remove(i);
        }
    }
}
