//! The model window: what is loaded (its card, unload), how to load (weight formats,
//! backend, threads, context), and what to load (a path or file dialog, recent models,
//! models found on this computer), with the load's progress.

use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;
use pocketvlm_engine::tensor::DType;
use pocketvlm_engine::{BackendKind, LoadOptions, ModelInfo};
use serde::{Deserialize, Serialize};

use super::app::Action;
use super::engine_link::ModelState;
use super::format;
use super::scan::{FoundModel, ScanRoot, Scanner};
use super::sidebar::short_name;

/// Weight formats offered for quantise-on-load (`None`: as stored in the file).
const FORMATS: [Option<&str>; 6] = [
    None,
    Some("q4_0"),
    Some("q4_1"),
    Some("q8_0"),
    Some("f16"),
    Some("f32"),
];

/// How to load, as the user chose it; saved with the app settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadChoice {
    pub quant: Option<String>,
    pub vision_quant: Option<String>,
    pub backend: BackendKind,
    /// Where the vision tower runs (`None`: beside the language model).
    pub vision_backend: Option<BackendKind>,
    /// 0: all cores.
    pub threads: usize,
    /// 0: the model's maximum.
    pub context_len: usize,
}

impl Default for LoadChoice {
    fn default() -> Self {
        LoadChoice {
            quant: None,
            vision_quant: None,
            backend: BackendKind::Auto,
            vision_backend: None,
            threads: 0,
            context_len: 0,
        }
    }
}

impl LoadChoice {
    pub fn options(&self, mmproj: Option<PathBuf>) -> LoadOptions {
        let dtype = |q: &Option<String>| q.as_deref().and_then(DType::parse);
        LoadOptions {
            backend: self.backend,
            threads: (self.threads > 0).then_some(self.threads),
            context_len: (self.context_len > 0).then_some(self.context_len),
            quant: dtype(&self.quant),
            vision_quant: dtype(&self.vision_quant),
            mmproj,
            vision_backend: self.vision_backend,
            ..Default::default()
        }
    }
}

/// A model opened before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentModel {
    pub path: PathBuf,
    #[serde(default)]
    pub mmproj: Option<PathBuf>,
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub last_used_unix: u64,
}

pub struct ModelPicker {
    pub open: bool,
    /// The model path typed or picked.
    pub path: String,
    /// The projector file for a GGUF language model.
    pub mmproj: String,
    pub scanner: Scanner,
    dialog: Option<Receiver<Option<(DialogTarget, PathBuf)>>>,
}

#[derive(Clone, Copy, Debug)]
enum DialogTarget {
    Model,
    Mmproj,
}

impl ModelPicker {
    pub fn new() -> Self {
        ModelPicker {
            open: false,
            path: String::new(),
            mmproj: String::new(),
            scanner: Scanner::default(),
            dialog: None,
        }
    }

    pub fn poll(&mut self) {
        self.scanner.poll();
        if let Some(rx) = &self.dialog
            && let Ok(picked) = rx.try_recv()
        {
            self.dialog = None;
            match picked {
                Some((DialogTarget::Model, p)) => self.path = p.display().to_string(),
                Some((DialogTarget::Mmproj, p)) => self.mmproj = p.display().to_string(),
                None => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn ui(
        &mut self,
        ctx: &egui::Context,
        model: &ModelState,
        loaded_with: Option<&LoadOptions>,
        choice: &mut LoadChoice,
        recent: &[RecentModel],
        roots: &[ScanRoot],
        busy_generating: bool,
        actions: &mut Vec<Action>,
    ) {
        if !self.open {
            return;
        }
        if !self.scanner.scanned_once && !self.scanner.is_scanning() {
            self.scanner.start(ctx, roots.to_vec());
        }
        let mut open = self.open;
        egui::Window::new("Models")
            .id(egui::Id::unique("model-picker"))
            .open(&mut open)
            .default_width(760.0)
            .default_height(600.0)
            .pivot(egui::Align2::CENTER_TOP)
            .default_pos(ctx.content_rect().center_top() + egui::vec2(0.0, 40.0))
            .collapsible(false)
            .resizable(true)
            .show(ctx, |ui| {
                egui::ScrollArea::vertical()
                    .auto_shrink([false, true])
                    .show(ui, |ui| {
                        self.loaded_section(ui, model, loaded_with, actions);
                        ui.separator();
                        options_section(ui, choice);
                        ui.separator();
                        self.open_section(ui, model, busy_generating, actions);
                        ui.separator();
                        recent_section(ui, recent, model, actions);
                        ui.separator();
                        self.found_section(ui, roots, model, actions);
                    });
            });
        self.open = open;
    }

    fn loaded_section(
        &mut self,
        ui: &mut egui::Ui,
        model: &ModelState,
        loaded_with: Option<&LoadOptions>,
        actions: &mut Vec<Action>,
    ) {
        ui.heading("Loaded model");
        match model {
            ModelState::None => {
                ui.weak("None. Pick one below.");
            }
            ModelState::Loading {
                path,
                stage,
                fraction,
                started,
            } => {
                ui.label(format!("Loading {}…", short_name(path)));
                ui.add(
                    egui::ProgressBar::new(*fraction)
                        .show_percentage()
                        .text(format!(
                            "{stage} · {:.0}% · {:.1} s",
                            fraction * 100.0,
                            started.elapsed().as_secs_f32()
                        ))
                        .animate(true),
                );
                ui.ctx()
                    .request_repaint_after(std::time::Duration::from_millis(200));
            }
            ModelState::Ready(info) => {
                model_card(ui, info, loaded_with);
                if ui
                    .button("⏏ Unload")
                    .on_hover_text("Free the model's memory")
                    .clicked()
                {
                    actions.push(Action::UnloadModel);
                }
            }
        }
    }

    fn open_section(
        &mut self,
        ui: &mut egui::Ui,
        model: &ModelState,
        busy_generating: bool,
        actions: &mut Vec<Action>,
    ) {
        ui.heading("Open a model");
        ui.weak(
            "A Hugging Face checkpoint folder (config.json, weights, tokenizer), or a GGUF file.",
        );
        ui.horizontal(|ui| {
            let label = ui.label("Path");
            ui.add(
                egui::TextEdit::singleline(&mut self.path)
                    .hint_text("Model folder or .gguf file")
                    .desired_width(ui.available_width() - 230.0),
            )
            .labelled_by(label.id);
            if ui.button("🗁 Folder…").clicked() {
                self.pick(ui.ctx(), DialogTarget::Model, true);
            }
            if ui.button("🗋 GGUF…").clicked() {
                self.pick(ui.ctx(), DialogTarget::Model, false);
            }
        });
        let is_gguf = Path::new(self.path.trim())
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf {
            ui.horizontal(|ui| {
                let label = ui.label("Projector (mmproj)");
                ui.add(
                    egui::TextEdit::singleline(&mut self.mmproj)
                        .hint_text("Optional: the vision projector .gguf of a VLM")
                        .desired_width(ui.available_width() - 100.0),
                )
                .labelled_by(label.id);
                if ui.button("🗋 Browse…").clicked() {
                    self.pick(ui.ctx(), DialogTarget::Mmproj, false);
                }
            });
        }
        let loading = matches!(model, ModelState::Loading { .. });
        let can_load = !self.path.trim().is_empty() && !loading;
        ui.horizontal(|ui| {
            let load = ui.add_enabled(can_load, egui::Button::new("Load model"));
            if busy_generating {
                ui.weak("(stops the answer being written)");
            }
            if load.clicked() {
                let mmproj = (is_gguf && !self.mmproj.trim().is_empty())
                    .then(|| PathBuf::from(self.mmproj.trim()));
                actions.push(Action::LoadModel {
                    path: PathBuf::from(self.path.trim()),
                    mmproj,
                });
            }
        });
    }

    fn found_section(
        &mut self,
        ui: &mut egui::Ui,
        roots: &[ScanRoot],
        model: &ModelState,
        actions: &mut Vec<Action>,
    ) {
        ui.horizontal(|ui| {
            ui.heading("On this computer");
            if self.scanner.is_scanning() {
                ui.spinner();
            } else if ui.button("⟳ Rescan").clicked() {
                self.scanner.start(ui.ctx(), roots.to_vec());
            }
        });
        for r in roots {
            ui.weak(format!("· {}", r.path.display()));
        }
        if self.scanner.found.is_empty() {
            if self.scanner.scanned_once {
                ui.weak("No models found in these folders.");
            }
            return;
        }
        let loading = matches!(model, ModelState::Loading { .. });
        egui::Grid::new("found-models")
            .striped(true)
            .num_columns(5)
            .spacing([12.0, 6.0])
            .show(ui, |ui| {
                for h in ["Name", "Family", "Size", "Weights", ""] {
                    ui.strong(h);
                }
                ui.end_row();
                for m in &self.scanner.found {
                    found_row(ui, m, loading, actions);
                    ui.end_row();
                }
            });
    }

    /// Opens a file dialog on a worker thread (the dialog blocks until closed), except on
    /// macOS, where dialogs must run on the main thread.
    fn pick(&mut self, ctx: &egui::Context, target: DialogTarget, folder: bool) {
        if self.dialog.is_some() {
            return;
        }
        let run = move || {
            let d = rfd::FileDialog::new();
            let picked = if folder {
                d.set_title("Choose a model folder").pick_folder()
            } else {
                d.set_title("Choose a GGUF file")
                    .add_filter("GGUF", &["gguf"])
                    .pick_file()
            };
            picked.map(|p| (target, p))
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

fn found_row(ui: &mut egui::Ui, m: &FoundModel, loading: bool, actions: &mut Vec<Action>) {
    ui.label(&m.name)
        .on_hover_text(m.path.display().to_string());
    let family = if m.is_vision() {
        format!("🖼 {}", m.family)
    } else {
        m.family.clone()
    };
    ui.label(family);
    ui.label(format::bytes(m.size_bytes));
    ui.label(&m.quant);
    match &m.problem {
        Some(p) => {
            ui.colored_label(ui.visuals().warn_fg_color, "⚠ unsupported")
                .on_hover_text(p);
        }
        None => {
            if ui
                .add_enabled(!loading, egui::Button::new("Load"))
                .on_hover_text(format!("Load {}", m.path.display()))
                .clicked()
            {
                actions.push(Action::LoadModel {
                    path: m.path.clone(),
                    mmproj: m.mmproj.clone(),
                });
            }
        }
    }
}

fn options_section(ui: &mut egui::Ui, choice: &mut LoadChoice) {
    ui.heading("Load settings");
    egui::Grid::new("load-options")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            format_combo(ui, "Language model weights", &mut choice.quant);
            ui.end_row();
            format_combo(ui, "Vision weights", &mut choice.vision_quant);
            ui.end_row();
            let label = ui.label("Backend");
            egui::ComboBox::from_id_salt("backend")
                .selected_text(backend_name(choice.backend))
                .show_ui(ui, |ui| {
                    for b in [BackendKind::Auto, BackendKind::Cpu, BackendKind::Gpu] {
                        ui.selectable_value(&mut choice.backend, b, backend_name(b));
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();
            let label = ui.label("Vision tower on");
            let vision_name = |v: Option<BackendKind>| v.map_or("same backend", backend_name);
            egui::ComboBox::from_id_salt("vision-backend")
                .selected_text(vision_name(choice.vision_backend))
                .show_ui(ui, |ui| {
                    for v in [None, Some(BackendKind::Cpu), Some(BackendKind::Gpu)] {
                        ui.selectable_value(&mut choice.vision_backend, v, vision_name(v));
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "Encode images on the other backend while the language model prefills",
                );
            ui.end_row();
            let label = ui.label("CPU threads");
            ui.add(
                egui::DragValue::new(&mut choice.threads)
                    .range(0..=256)
                    .custom_formatter(|v, _| {
                        if v == 0.0 {
                            "all cores".into()
                        } else {
                            format!("{v}")
                        }
                    }),
            )
            .labelled_by(label.id)
            .on_hover_text("0: all cores");
            ui.end_row();
            let label = ui.label("Context length");
            ui.add(
                egui::DragValue::new(&mut choice.context_len)
                    .range(0..=1_048_576)
                    .speed(64)
                    .custom_formatter(|v, _| {
                        if v == 0.0 {
                            "model maximum".into()
                        } else {
                            format!("{v} tokens")
                        }
                    }),
            )
            .labelled_by(label.id)
            .on_hover_text("0: the model's maximum. Smaller saves KV-cache memory.");
            ui.end_row();
        });
    ui.weak("Takes effect on the next load.");
}

fn format_combo(ui: &mut egui::Ui, label: &str, value: &mut Option<String>) {
    let label_response = ui.label(label);
    let name = |f: Option<&str>| match f {
        None => "as stored".to_string(),
        Some(s) => s.to_string(),
    };
    egui::ComboBox::from_id_salt(label)
        .selected_text(name(value.as_deref()))
        .show_ui(ui, |ui| {
            for f in FORMATS {
                let selected = value.as_deref() == f;
                if ui.selectable_label(selected, name(f)).clicked() {
                    *value = f.map(str::to_string);
                }
            }
        })
        .response
        .labelled_by(label_response.id);
}

pub fn backend_name(b: BackendKind) -> &'static str {
    match b {
        BackendKind::Auto => "auto",
        BackendKind::Cpu => "cpu",
        BackendKind::Gpu => "gpu",
    }
}

fn recent_section(
    ui: &mut egui::Ui,
    recent: &[RecentModel],
    model: &ModelState,
    actions: &mut Vec<Action>,
) {
    ui.heading("Recent");
    if recent.is_empty() {
        ui.weak("Models you load appear here.");
        return;
    }
    let loading = matches!(model, ModelState::Loading { .. });
    let now = format::now_unix();
    egui::Grid::new("recent-models")
        .striped(true)
        .num_columns(4)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            for r in recent {
                ui.label(short_name(&r.path))
                    .on_hover_text(r.path.display().to_string());
                ui.label(&r.family);
                ui.weak(format::ago(r.last_used_unix, now));
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(!loading, egui::Button::new("Load"))
                        .on_hover_text(format!("Load {}", r.path.display()))
                        .clicked()
                    {
                        actions.push(Action::LoadModel {
                            path: r.path.clone(),
                            mmproj: r.mmproj.clone(),
                        });
                    }
                    if ui.small_button("✖").on_hover_text("Forget").clicked() {
                        actions.push(Action::ForgetRecent(r.path.clone()));
                    }
                });
                ui.end_row();
            }
        });
}

/// What the loaded model is: family, size, formats, context, where it runs.
pub fn model_card(ui: &mut egui::Ui, info: &ModelInfo, loaded_with: Option<&LoadOptions>) {
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.label(
            egui::RichText::new(short_name(&info.path))
                .strong()
                .size(16.0),
        );
        ui.weak(info.path.display().to_string());
        egui::Grid::new("model-card")
            .num_columns(2)
            .spacing([16.0, 4.0])
            .show(ui, |ui| {
                let row = |ui: &mut egui::Ui, k: &str, v: String| {
                    ui.weak(k);
                    ui.label(v);
                    ui.end_row();
                };
                row(ui, "Family", info.family.clone());
                row(ui, "Architecture", info.architecture.clone());
                row(ui, "Parameters", format::count(info.params));
                let stored = info
                    .dtypes
                    .iter()
                    .map(|(d, n)| format!("{d} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                row(ui, "Stored as", stored);
                if let Some(o) = loaded_with {
                    let f = |d: Option<DType>| {
                        d.map_or("as stored".to_string(), |d| format!("{d:?}").to_lowercase())
                    };
                    row(
                        ui,
                        "Quantisation",
                        format!("LLM {} · vision {}", f(o.quant), f(o.vision_quant)),
                    );
                }
                row(
                    ui,
                    "Weights in memory",
                    format::bytes(info.weight_bytes as u64),
                );
                row(ui, "Context length", format!("{} tokens", info.context_len));
                row(
                    ui,
                    "Images",
                    match info.image_tokens {
                        Some(n) => format!("yes, {n} tokens each"),
                        None => "no (text only)".into(),
                    },
                );
                row(ui, "Backend", info.backend.clone());
                if let Some(v) = &info.vision_backend {
                    row(ui, "Vision tower on", v.clone());
                }
                if let Some(choice) = &info.auto_choice {
                    row(ui, "Auto choice", choice.clone());
                }
                row(
                    ui,
                    "Adapter",
                    info.adapter
                        .clone()
                        .unwrap_or_else(|| "CPU (no GPU adapter)".into()),
                );
                row(ui, "Loaded in", format::ms(info.load_ms));
            });
    });
}
