//! The right panel: the conversation's generation settings and the latency dashboard.

use pocketvlm_engine::SamplingParams;
use serde::{Deserialize, Serialize};

use super::app::Action;
use super::conversation::GenerationSettings;
use super::dashboard::Dashboard;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    Settings,
    #[default]
    Latency,
}

pub struct Inspector {
    pub tab: Tab,
    pub dashboard: Dashboard,
}

impl Inspector {
    pub fn new(tab: Tab) -> Self {
        Inspector {
            tab,
            dashboard: Dashboard::default(),
        }
    }

    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        settings: Option<&mut GenerationSettings>,
        model_defaults: Option<&SamplingParams>,
        context_len: Option<usize>,
        weights: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.tab, Tab::Settings, "⚙ Settings");
            ui.selectable_value(&mut self.tab, Tab::Latency, "⏱ Latency");
        });
        ui.separator();
        egui::ScrollArea::vertical()
            .id_salt("inspector-scroll")
            .auto_shrink([false, false])
            .show(ui, |ui| match self.tab {
                Tab::Settings => match settings {
                    Some(s) => {
                        if settings_ui(ui, s, model_defaults, context_len) {
                            actions.push(Action::SettingsChanged);
                        }
                    }
                    None => {
                        ui.weak("Start a chat to change its settings.");
                    }
                },
                Tab::Latency => self.dashboard.ui(ui, weights),
            });
    }
}

/// The generation settings of a conversation; returns whether the user changed any.
fn settings_ui(
    ui: &mut egui::Ui,
    s: &mut GenerationSettings,
    model_defaults: Option<&SamplingParams>,
    context_len: Option<usize>,
) -> bool {
    let before = s.clone();
    ui.heading("This chat");
    ui.label("System prompt");
    ui.add(
        egui::TextEdit::multiline(&mut s.system_prompt)
            .hint_text("Optional instructions for the model")
            .desired_rows(3)
            .desired_width(f32::INFINITY),
    );
    ui.add_space(6.0);
    ui.heading("Sampling");
    // Always one line here, so the widgets below keep their ids when it changes.
    ui.weak(match (s.follow_model, model_defaults.is_some()) {
        (true, true) => "Following the model's recommended settings.",
        (true, false) => "Will follow the model's recommended settings.",
        (false, _) => "Custom settings for this chat.",
    });
    let mut sampling_changed = false;
    sampling_changed |= ui
        .add(egui::Slider::new(&mut s.temperature, 0.0..=2.0).text("Temperature"))
        .on_hover_text("0 always picks the most likely token (greedy)")
        .changed();
    sampling_changed |= ui
        .add(egui::Slider::new(&mut s.top_p, 0.05..=1.0).text("Top-p"))
        .on_hover_text(
            "Sample from the most likely tokens that make up this much probability; 1 = off",
        )
        .changed();
    sampling_changed |= ui
        .add(egui::Slider::new(&mut s.top_k, 0..=200).text("Top-k"))
        .on_hover_text("Sample from this many most likely tokens; 0 = off")
        .changed();
    sampling_changed |= ui
        .add(egui::Slider::new(&mut s.repetition_penalty, 0.8..=2.0).text("Repetition penalty"))
        .on_hover_text("Above 1 discourages repeating tokens; 1 = off")
        .changed();
    if sampling_changed {
        s.follow_model = false;
    }
    let max = context_len.unwrap_or(32_768).max(1);
    ui.add(
        egui::Slider::new(&mut s.max_tokens, 1..=max)
            .logarithmic(true)
            .text("Max tokens"),
    );
    ui.horizontal(|ui| {
        let label = ui.label("Seed");
        ui.add(egui::DragValue::new(&mut s.seed))
            .labelled_by(label.id);
        if ui
            .small_button("🎲")
            .on_hover_text("A random seed")
            .clicked()
        {
            s.seed = random_seed();
        }
    });
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        if let Some(d) = model_defaults
            && ui
                .button("Use the model's defaults")
                .on_hover_text(format!(
                    "temperature {}, top-p {}, top-k {}, repetition penalty {}",
                    d.temperature, d.top_p, d.top_k, d.repetition_penalty
                ))
                .clicked()
        {
            s.adopt_model_defaults(d);
        }
    });
    *s != before
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % 1_000_000
}
