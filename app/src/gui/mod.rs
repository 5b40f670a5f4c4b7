//! The desktop app: a chat window over the engine thread.
//!
//! ```text
//! ┌ top bar: title · model status · inspector toggle ───────────────────────┐
//! │ sidebar         │ chat (messages, streaming answer)     │ inspector     │
//! │ conversations   │                                       │ settings /    │
//! │ model picker    ├───────────────────────────────────────┤ latency       │
//! │                 │ composer (attachments, text, send)    │ dashboard     │
//! └─────────────────┴───────────────────────────────────────┴───────────────┘
//! ```
//!
//! Each panel is a struct with a `ui()` and owns its state; [`PocketApp`] arranges them and
//! routes what they ask for ([`app::Action`]). Nothing slow runs on the UI thread: the model
//! lives on the engine thread ([`engine_link`]), images are decoded and copied on worker
//! threads ([`images`]), the model scan runs on its own thread ([`scan`]), and each of
//! them wakes the UI when it has news.

mod app;
mod chat_view;
mod composer;
pub mod conversation;
mod dashboard;
pub mod demo;
pub mod engine_link;
pub mod format;
pub mod images;
mod inspector;
mod model_picker;
mod notices;
pub mod scan;
mod sidebar;
pub mod store;

use std::path::PathBuf;

pub use app::{Action, PocketApp};
pub use notices::{Level, Notice};

/// Where the app keeps its files and where it looks for models.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Conversations, copied images, settings (the platform data dir, or
    /// `POCKETVLM_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Folders scanned for models.
    pub scan_roots: Vec<scan::ScanRoot>,
    /// Load the bundled demo model at start-up when the user has not chosen another model.
    pub load_demo: bool,
}

impl AppConfig {
    /// The app's files in `data_dir`; models looked for in the usual places.
    pub fn new(data_dir: PathBuf) -> Self {
        let scan_roots = scan::default_roots(&data_dir);
        AppConfig {
            data_dir,
            scan_roots,
            load_demo: true,
        }
    }

    /// `POCKETVLM_DATA_DIR` if set, else the platform's data folder for PocketVLM.
    pub fn from_env() -> anyhow::Result<Self> {
        let dir = match std::env::var_os("POCKETVLM_DATA_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => directories::ProjectDirs::from("", "", "PocketVLM")
                .map(|p| p.data_dir().to_path_buf())
                .ok_or_else(|| anyhow::anyhow!("cannot tell where this system keeps app data (no home folder?); set POCKETVLM_DATA_DIR"))?,
        };
        Ok(AppConfig::new(dir))
    }
}

/// Opens the app window and runs until it is closed.
pub fn run() -> anyhow::Result<()> {
    let config = AppConfig::from_env()?;
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("PocketVLM")
        .with_app_id("pocketvlm")
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([760.0, 480.0])
        .with_drag_and_drop(true);
    if let Ok(icon) = eframe::icon_data::from_png_bytes(include_bytes!("../../../assets/icon.png"))
    {
        viewport = viewport.with_icon(icon);
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "PocketVLM",
        options,
        Box::new(move |cc| Ok(Box::new(Window(PocketApp::new(&cc.egui_ctx, config))))),
    )
    .map_err(|e| anyhow::anyhow!("could not open the app window: {e}"))
}

/// The eframe side of the app: hands each frame to [`PocketApp::ui`].
struct Window(PocketApp);

impl eframe::App for Window {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.0.ui(ui);
    }

    fn on_exit(&mut self) {
        self.0.shutdown();
    }
}
