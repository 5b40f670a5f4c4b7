//! [`PocketApp`]: arranges the panels, routes their [`Action`]s, and connects them to the
//! engine, the image workers and the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pocketvlm_engine::{GenerateRequest, LoadOptions, ModelInfo, Role};
use serde::{Deserialize, Serialize};

use super::AppConfig;
use super::chat_view::{ChatContext, ChatView, Pending};
use super::composer::Composer;
use super::conversation::{ChatMessage, Conversation, GenerationSettings, new_id};
use super::demo;
use super::engine_link::{EngineLink, ModelState, Update};
use super::format::now_unix;
use super::images::{Done, Images, Source};
use super::inspector::{Inspector, Tab};
use super::model_picker::{LoadChoice, ModelPicker, RecentModel};
use super::notices::Notices;
use super::sidebar::{Sidebar, short_name};
use super::store::Store;

/// What a panel asks the app to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    NewConversation,
    SelectConversation(String),
    RenameConversation {
        id: String,
        title: String,
    },
    DeleteConversation(String),
    OpenModelPicker,
    LoadModel {
        path: PathBuf,
        mmproj: Option<PathBuf>,
    },
    UnloadModel,
    ForgetRecent(PathBuf),
    RestartEngine,
    Send,
    Stop,
    Regenerate,
    EditAndResend {
        index: usize,
        text: String,
    },
    CopyText(String),
    SettingsChanged,
}

/// Recent models kept in the settings.
const RECENT: usize = 10;

/// App-wide settings, saved in `settings.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSettings {
    pub recent_models: Vec<RecentModel>,
    pub load: LoadChoice,
    pub inspector_open: bool,
    pub inspector_tab: Tab,
    pub selected_conversation: Option<String>,
    /// Settings new chats start with.
    pub new_chat: GenerationSettings,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            recent_models: Vec::new(),
            load: LoadChoice::default(),
            inspector_open: true,
            inspector_tab: Tab::Latency,
            selected_conversation: None,
            new_chat: GenerationSettings::default(),
        }
    }
}

pub struct PocketApp {
    pub config: AppConfig,
    store: Option<Store>,
    pub settings: AppSettings,
    pub engine: EngineLink,
    /// Newest first.
    pub conversations: Vec<Conversation>,
    pub selected: Option<String>,
    pub pending: Option<Pending>,
    /// The options of the model now loaded (or loading).
    pub loaded_with: Option<LoadOptions>,
    pub sidebar: Sidebar,
    pub picker: ModelPicker,
    pub chat: ChatView,
    pub composer: Composer,
    pub inspector: Inspector,
    pub images: Images,
    pub notices: Notices,
    /// Files are hovering over the window (the drop overlay is shown).
    pub drop_hover: bool,
}

impl PocketApp {
    pub fn new(ctx: &egui::Context, config: AppConfig) -> Self {
        let mut notices = Notices::default();
        let store = match Store::open(&config.data_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                notices.error(format!(
                    "Cannot use the data folder {}: {e}. Nothing will be saved this session.",
                    config.data_dir.display()
                ));
                None
            }
        };
        let (settings, conversations) = match &store {
            Some(s) => {
                let (settings, problem) = s.load_settings::<AppSettings>();
                if let Some(p) = problem {
                    notices.warn(format!("Settings: {} Defaults are used.", p.0));
                }
                let (conversations, problems) = s.load_conversations();
                for p in problems {
                    notices.warn(p.0);
                }
                (settings, conversations)
            }
            None => (AppSettings::default(), Vec::new()),
        };
        let images_dir = store
            .as_ref()
            .map(Store::images_dir)
            .unwrap_or_else(|| config.data_dir.join("images"));
        let selected = settings
            .selected_conversation
            .clone()
            .filter(|id| conversations.iter().any(|c| &c.id == id))
            .or_else(|| conversations.first().map(|c| c.id.clone()));
        let inspector = Inspector::new(settings.inspector_tab);
        let mut app = PocketApp {
            config,
            store,
            settings,
            engine: EngineLink::new(ctx),
            conversations,
            selected,
            pending: None,
            loaded_with: None,
            sidebar: Sidebar::default(),
            picker: ModelPicker::new(),
            chat: ChatView::default(),
            composer: Composer::default(),
            inspector,
            images: Images::new(ctx, images_dir),
            notices,
            drop_hover: false,
        };
        if app.config.load_demo {
            app.load_demo_unless_chosen(ctx);
        }
        app
    }

    /// The embedded default: loads the bundled demo model unless the user has loaded
    /// another model before (then the model window lists it among the recent ones).
    fn load_demo_unless_chosen(&mut self, ctx: &egui::Context) {
        let demo = demo::demo_dir(&self.config.data_dir);
        if self.settings.recent_models.iter().any(|r| r.path != demo) {
            return;
        }
        match demo::install(&self.config.data_dir) {
            Ok(path) => self.act(ctx, Action::LoadModel { path, mmproj: None }),
            Err(e) => self.notices.error(format!(
                "Could not set up the demo model in {}: {e}",
                demo.display()
            )),
        }
    }

    /// The conversation on screen.
    pub fn current(&self) -> Option<&Conversation> {
        let id = self.selected.as_deref()?;
        self.conversations.iter().find(|c| c.id == id)
    }

    fn current_mut(&mut self) -> Option<&mut Conversation> {
        let id = self.selected.clone()?;
        self.conversations.iter_mut().find(|c| c.id == id)
    }

    fn conversation_mut(&mut self, id: &str) -> Option<&mut Conversation> {
        self.conversations.iter_mut().find(|c| c.id == id)
    }

    /// Saves at exit and stops the engine.
    pub fn shutdown(&mut self) {
        self.save_settings();
        self.engine.shutdown();
    }

    // ---- the frame --------------------------------------------------------------------

    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let mut actions = Vec::new();
        self.poll(ui.ctx());
        self.handle_input(ui.ctx(), &mut actions);

        self.top_bar(ui, &mut actions);
        egui::Panel::left("sidebar")
            .resizable(true)
            .default_size(250.0)
            .size_range(200.0..=420.0)
            .show(ui, |ui| {
                self.sidebar.ui(
                    ui,
                    &self.conversations,
                    self.selected.as_deref(),
                    &self.engine.model,
                    &mut actions,
                );
            });
        let mut inspector_open = self.settings.inspector_open;
        egui::Panel::right("inspector")
            .resizable(true)
            .default_size(330.0)
            .size_range(260.0..=560.0)
            .show_collapsible(ui, &mut inspector_open, |ui| {
                let info = self.engine.info().cloned();
                let id = self.selected.clone();
                let settings = id
                    .and_then(|id| self.conversations.iter_mut().find(|c| c.id == id))
                    .map(|c| &mut c.settings);
                self.inspector.ui(
                    ui,
                    settings,
                    info.as_ref().map(|i| &i.default_sampling),
                    info.as_ref().map(|i| i.context_len),
                    info.as_ref().map(|i| i.weight_bytes as u64),
                    &mut actions,
                );
            });
        if inspector_open != self.settings.inspector_open {
            self.settings.inspector_open = inspector_open;
            self.save_settings();
        }
        egui::Panel::bottom("composer")
            .frame(egui::Frame::side_top_panel(ui.style()).inner_margin(egui::Margin::same(10)))
            .show(ui, |ui| {
                let can_send =
                    matches!(self.engine.model, ModelState::Ready(_)) && !self.engine.is_busy();
                // The sample scenes are offered while the chat on screen is empty.
                let offer_samples = self.current().is_none_or(|c| c.messages.is_empty());
                self.composer.ui(
                    ui,
                    &mut self.images,
                    self.engine.is_generating(),
                    can_send,
                    offer_samples,
                    &mut actions,
                );
            });
        egui::CentralPanel::default().show(ui, |ui| {
            self.notices.ui(ui);
            let cx = ChatContext {
                conversation: self
                    .selected
                    .as_deref()
                    .and_then(|id| self.conversations.iter().find(|c| c.id == id)),
                pending: self.pending.as_ref(),
                model: &self.engine.model,
                busy: self.engine.is_busy(),
            };
            self.chat.ui(ui, cx, &mut self.images, &mut actions);
        });
        self.picker.ui(
            ui.ctx(),
            &self.engine.model,
            self.loaded_with.as_ref(),
            &mut self.settings.load,
            &self.settings.recent_models,
            &self.config.scan_roots,
            self.engine.is_generating(),
            &mut actions,
        );
        if self.drop_hover {
            drop_overlay(ui.ctx());
        }
        for a in actions {
            self.act(ui.ctx(), a);
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui, actions: &mut Vec<Action>) {
        egui::Panel::top("top-bar")
            .frame(
                egui::Frame::side_top_panel(ui.style())
                    .inner_margin(egui::Margin::symmetric(10, 6)),
            )
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.label(egui::RichText::new("PocketVLM").strong().size(16.0));
                    ui.separator();
                    let title = self
                        .current()
                        .map_or("New chat".to_string(), |c| c.title.clone());
                    ui.label(title);
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        let open = self.settings.inspector_open;
                        if ui
                            .selectable_label(open, "⏱ Inspector")
                            .on_hover_text("Show or hide the settings and latency panel")
                            .clicked()
                        {
                            self.settings.inspector_open = !open;
                            self.save_settings();
                        }
                        if !self.engine.is_alive() {
                            if ui.button("Restart engine").clicked() {
                                actions.push(Action::RestartEngine);
                            }
                            ui.colored_label(ui.visuals().error_fg_color, "⚠ engine stopped");
                        } else {
                            match &self.engine.model {
                                ModelState::Ready(info) => {
                                    ui.weak(format!(
                                        "{} · {}",
                                        short_name(&info.path),
                                        info.backend
                                    ));
                                }
                                ModelState::Loading { fraction, .. } => {
                                    ui.weak(format!("loading {:.0}%", fraction * 100.0));
                                    ui.spinner();
                                }
                                ModelState::None => {
                                    ui.weak("no model");
                                }
                            }
                        }
                    });
                });
            });
    }

    /// Keyboard shortcuts, drops and pastes.
    fn handle_input(&mut self, ctx: &egui::Context, actions: &mut Vec<Action>) {
        let (hovered, dropped, pasted, new_chat) = ctx.input(|i| {
            let pasted: Vec<Arc<egui::ColorImage>> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PasteImage(img) => Some(img.clone()),
                    _ => None,
                })
                .collect();
            (
                !i.raw.hovered_files.is_empty(),
                i.raw.dropped_files.clone(),
                pasted,
                i.modifiers.command && i.key_pressed(egui::Key::N),
            )
        });
        self.drop_hover = hovered;
        if new_chat {
            actions.push(Action::NewConversation);
        }
        for f in dropped {
            let path = f.path().to_path_buf();
            let is_model = path.is_dir()
                || path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            if is_model {
                // A model folder or GGUF file: offer it in the model window.
                self.picker.path = path.display().to_string();
                self.picker.open = true;
                continue;
            }
            let source = if path.is_file() {
                Source::Path(path)
            } else {
                match f.bytes() {
                    Ok(bytes) => Source::Bytes {
                        name: path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "dropped file".into()),
                        bytes: Arc::new(bytes),
                    },
                    Err(e) => {
                        self.notices.error(format!(
                            "Could not read the dropped file {}: {e}",
                            path.display()
                        ));
                        continue;
                    }
                }
            };
            self.composer.attach(&self.images, source);
        }
        for img in pasted {
            self.composer.attach(&self.images, Source::Pasted(img));
        }
    }

    // ---- background results ------------------------------------------------------------

    fn poll(&mut self, ctx: &egui::Context) {
        self.picker.poll();
        for path in self.composer.poll() {
            self.composer.attach(&self.images, Source::Path(path));
        }
        for done in self.images.poll() {
            match done {
                Done::Imported {
                    attachment,
                    stored,
                    thumb,
                } => {
                    self.images.insert_thumbnail(&stored, thumb);
                    // Encode while the user types: the engine starts on the image now.
                    if let Some(dir) = self.store.as_ref().map(Store::images_dir) {
                        self.engine.prepare_image(&dir.join(&stored));
                    }
                    self.composer.imported(attachment, stored);
                }
                Done::ImportFailed {
                    attachment,
                    name: _,
                    error,
                } => {
                    self.composer.import_failed(attachment);
                    self.notices.error(error);
                }
                Done::Decoded { .. } => {}
            }
        }
        for update in self.engine.poll() {
            self.on_engine(ctx, update);
        }
    }

    fn on_engine(&mut self, ctx: &egui::Context, update: Update) {
        match update {
            Update::Loaded(info) => self.on_loaded(&info),
            Update::LoadFailed { path, error } => {
                self.loaded_with = None;
                self.notices
                    .error(format!("Could not load {}: {error}", short_name(&path)));
            }
            Update::Unloaded => {
                self.loaded_with = None;
                self.notices.info("Model unloaded.");
            }
            Update::Started { prompt_tokens } => {
                if let Some(p) = &mut self.pending {
                    p.prompt_tokens = Some(prompt_tokens);
                }
            }
            Update::Token { text, at } => {
                if let Some(p) = &mut self.pending {
                    p.text.push_str(&text);
                    p.tokens += 1;
                }
                self.inspector.dashboard.token(at);
            }
            Update::Finished {
                text,
                stop,
                metrics,
            } => {
                let model = self
                    .engine
                    .info()
                    .map(|i| short_name(&i.path))
                    .unwrap_or_default();
                self.inspector
                    .dashboard
                    .finish_turn(model.clone(), stop, metrics.clone());
                if let Some(p) = self.pending.take() {
                    let mut answer = ChatMessage::assistant(text);
                    answer.metrics = Some(metrics);
                    answer.stop = Some(stop);
                    answer.model = Some(model);
                    if let Some(c) = self.conversation_mut(&p.conversation) {
                        c.messages.push(answer);
                        c.updated_unix = now_unix();
                    }
                    self.save_conversation(&p.conversation);
                }
                ctx.request_repaint();
            }
            Update::GenerateFailed(error) => {
                self.pending = None;
                self.inspector.dashboard.abort_turn();
                let hint = if error.contains("context window") {
                    " Start a new chat, edit your message to be shorter, or load the model with a longer context."
                } else {
                    ""
                };
                self.notices.error(format!(
                    "The answer failed: {}.{hint}",
                    error.trim_end_matches('.')
                ));
            }
            Update::EngineDied => {
                self.pending = None;
                self.loaded_with = None;
                self.inspector.dashboard.abort_turn();
                self.notices.error(
                    "The engine stopped unexpectedly and the model was unloaded. Use “Restart engine” at the top right, then load a model again.",
                );
            }
        }
    }

    fn on_loaded(&mut self, info: &ModelInfo) {
        self.notices.info(format!(
            "Loaded {} ({}, {}) in {}.",
            short_name(&info.path),
            info.family,
            super::format::bytes(info.weight_bytes as u64),
            super::format::ms(info.load_ms)
        ));
        for c in &mut self.conversations {
            if c.settings.follow_model {
                c.settings.adopt_model_defaults(&info.default_sampling);
            }
        }
        if self.settings.new_chat.follow_model {
            self.settings
                .new_chat
                .adopt_model_defaults(&info.default_sampling);
        }
        let mmproj = self.loaded_with.as_ref().and_then(|o| o.mmproj.clone());
        self.settings.recent_models.retain(|r| r.path != info.path);
        self.settings.recent_models.insert(
            0,
            RecentModel {
                path: info.path.clone(),
                mmproj,
                family: info.family.clone(),
                last_used_unix: now_unix(),
            },
        );
        self.settings.recent_models.truncate(RECENT);
        self.save_settings();
        self.picker.open = false;
    }

    // ---- actions ----------------------------------------------------------------------

    pub fn act(&mut self, ctx: &egui::Context, action: Action) {
        match action {
            Action::NewConversation => {
                // An empty chat already on screen is reused.
                if self.current().is_some_and(|c| c.messages.is_empty()) {
                    self.composer.focus(ctx);
                    return;
                }
                let c = Conversation::new(new_id(), self.settings.new_chat.clone());
                self.selected = Some(c.id.clone());
                self.conversations.insert(0, c);
                self.settings.selected_conversation = self.selected.clone();
                self.save_settings();
                self.composer.focus(ctx);
            }
            Action::SelectConversation(id) => {
                self.selected = Some(id);
                self.settings.selected_conversation = self.selected.clone();
                self.save_settings();
            }
            Action::RenameConversation { id, title } => {
                if let Some(c) = self.conversation_mut(&id) {
                    c.title = title;
                    c.title_is_custom = true;
                }
                self.save_conversation(&id);
            }
            Action::DeleteConversation(id) => self.delete_conversation(&id),
            Action::OpenModelPicker => self.picker.open = true,
            Action::LoadModel { path, mmproj } => {
                if self.pending.is_some() {
                    self.engine.cancel();
                }
                let options = self.settings.load.options(mmproj);
                match self.engine.load(&path, options.clone()) {
                    Ok(()) => {
                        self.loaded_with = Some(options);
                        self.picker.path = path.display().to_string();
                        self.save_settings();
                    }
                    Err(e) => self.notices.error(format!("Could not load: {e}")),
                }
            }
            Action::UnloadModel => {
                if let Err(e) = self.engine.unload() {
                    self.notices.error(e);
                }
            }
            Action::ForgetRecent(path) => {
                self.settings.recent_models.retain(|r| r.path != path);
                self.save_settings();
            }
            Action::RestartEngine => {
                self.pending = None;
                self.loaded_with = None;
                self.engine.restart();
                self.notices
                    .info("The engine was restarted. Load a model to continue.");
            }
            Action::Send => self.send(ctx),
            Action::Stop => {
                self.engine.cancel();
                if let Some(p) = &mut self.pending {
                    p.stopping = true;
                }
            }
            Action::Regenerate => {
                let Some(c) = self.current_mut() else { return };
                if c.messages.last().is_some_and(|m| m.role == Role::Assistant) {
                    c.messages.pop();
                }
                if c.messages.last().is_some_and(|m| m.role == Role::User) {
                    let id = c.id.clone();
                    self.save_conversation(&id);
                    self.start_generation(&id);
                }
            }
            Action::EditAndResend { index, text } => {
                if text.trim().is_empty() {
                    self.notices.warn("The edited message is empty.");
                    return;
                }
                let Some(c) = self.current_mut() else { return };
                let Some(old) = c.messages.get(index).filter(|m| m.role == Role::User) else {
                    return;
                };
                let images = old.images.clone();
                c.messages.truncate(index);
                c.messages.push(ChatMessage::user(text, images));
                c.auto_title();
                c.updated_unix = now_unix();
                let id = c.id.clone();
                self.save_conversation(&id);
                self.start_generation(&id);
            }
            Action::CopyText(text) => {
                ctx.copy_text(text);
                self.notices.info("Copied.");
            }
            Action::SettingsChanged => {
                if let Some(id) = self.selected.clone() {
                    self.save_conversation(&id);
                }
            }
        }
    }

    fn send(&mut self, ctx: &egui::Context) {
        let Some(info) = self.engine.info() else {
            self.notices.error("Load a model first.");
            self.picker.open = true;
            return;
        };
        if self.engine.is_busy() {
            return;
        }
        if self.composer.is_importing() {
            self.notices
                .warn("Still reading the attached images; send again in a moment.");
            return;
        }
        let has_images = !self.composer.attachments.is_empty();
        let vision = info.image_tokens.is_some();
        if has_images && !vision {
            self.notices.error(format!(
                "{} is a text-only model: it cannot look at images. Remove the images, or load a vision model (MobileVLM, Imp).",
                short_name(&info.path)
            ));
            return;
        }
        if !vision && self.current().is_some_and(Conversation::has_images) {
            self.notices.error(format!(
                "This chat has images and {} is a text-only model. Start a new chat, or load a vision model.",
                short_name(&info.path)
            ));
            return;
        }
        let (text, images) = self.composer.take();
        if text.trim().is_empty() && images.is_empty() {
            return;
        }
        if self.current().is_none() {
            self.act(ctx, Action::NewConversation);
        }
        let Some(c) = self.current_mut() else { return };
        c.messages.push(ChatMessage::user(text.trim_end(), images));
        c.auto_title();
        c.updated_unix = now_unix();
        let id = c.id.clone();
        // Newest first in the sidebar.
        if let Some(pos) = self.conversations.iter().position(|c| c.id == id) {
            let c = self.conversations.remove(pos);
            self.conversations.insert(0, c);
        }
        // Saved before the answer starts: a crash now loses at most the answer.
        self.save_conversation(&id);
        self.start_generation(&id);
    }

    fn start_generation(&mut self, id: &str) {
        let default_sampling = self.engine.info().map(|i| i.default_sampling.clone());
        let Some(images_dir) = self.store.as_ref().map(Store::images_dir) else {
            self.notices.error("The data folder is not available.");
            return;
        };
        let Some(c) = self.conversation_mut(id) else {
            return;
        };
        if c.settings.follow_model
            && let Some(d) = &default_sampling
        {
            c.settings.adopt_model_defaults(d);
        }
        let request = GenerateRequest {
            messages: c.engine_messages(&images_dir),
            params: c.settings.sampling(),
            raw: false,
        };
        match self.engine.generate(request) {
            Ok(()) => {
                self.pending = Some(Pending {
                    conversation: id.to_string(),
                    text: String::new(),
                    started: std::time::Instant::now(),
                    prompt_tokens: None,
                    tokens: 0,
                    stopping: false,
                });
                self.inspector.dashboard.start_turn();
            }
            Err(e) => self
                .notices
                .error(format!("Could not start the answer: {e}")),
        }
    }

    fn delete_conversation(&mut self, id: &str) {
        if self.pending.as_ref().is_some_and(|p| p.conversation == id) {
            self.engine.cancel();
        }
        self.conversations.retain(|c| c.id != id);
        if let Some(store) = &self.store {
            if let Err(e) = store.delete_conversation(id) {
                self.notices
                    .error(format!("Could not delete the chat's file: {e}"));
            }
            let used = self
                .conversations
                .iter()
                .flat_map(|c| c.messages.iter())
                .flat_map(|m| m.images.iter().map(String::as_str))
                .chain(
                    self.composer
                        .attachments
                        .iter()
                        .filter_map(|a| a.stored.as_deref()),
                );
            store.remove_unused_images(used);
        }
        if self.selected.as_deref() == Some(id) {
            self.selected = self.conversations.first().map(|c| c.id.clone());
            self.settings.selected_conversation = self.selected.clone();
            self.save_settings();
        }
    }

    // ---- saving -----------------------------------------------------------------------

    fn save_conversation(&mut self, id: &str) {
        let Some(store) = &self.store else { return };
        if let Some(c) = self.conversations.iter().find(|c| c.id == id)
            && let Err(e) = store.save_conversation(c)
        {
            self.notices
                .error(format!("Could not save the chat “{}”: {e}", c.title));
        }
    }

    fn save_settings(&mut self) {
        self.settings.inspector_tab = self.inspector.tab;
        let Some(store) = &self.store else { return };
        if let Err(e) = store.save_settings(&self.settings) {
            self.notices
                .error(format!("Could not save the settings: {e}"));
        }
    }

    /// The folder the app keeps its files in.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// The overlay shown while files hover over the window.
fn drop_overlay(ctx: &egui::Context) {
    let screen = ctx.content_rect();
    let painter = ctx.layer_painter(egui::LayerId::new(
        egui::Order::Foreground,
        egui::Id::unique("drop-overlay"),
    ));
    painter.rect_filled(screen, 0.0, egui::Color32::from_black_alpha(170));
    let inner = screen.shrink(24.0);
    painter.rect_stroke(
        inner,
        12.0,
        egui::Stroke::new(3.0, egui::Color32::from_rgb(110, 170, 255)),
        egui::StrokeKind::Inside,
    );
    painter.text(
        screen.center() - egui::vec2(0.0, 16.0),
        egui::Align2::CENTER_CENTER,
        "Drop images to attach them",
        egui::FontId::proportional(26.0),
        egui::Color32::WHITE,
    );
    painter.text(
        screen.center() + egui::vec2(0.0, 18.0),
        egui::Align2::CENTER_CENTER,
        "or a model folder / .gguf file to load it",
        egui::FontId::proportional(16.0),
        egui::Color32::from_gray(200),
    );
}
