//! The app's side of the engine thread: sends [`Command`]s, turns [`Event`]s into
//! [`Update`]s for the panels, knows what the engine is busy with, and restarts it.
//!
//! A pump thread forwards the engine's events to the UI and asks for a repaint for each,
//! so the UI sleeps while nothing happens and still shows every token as it arrives. The
//! engine serves commands in order, so the queue of commands sent tells which one an
//! [`Event::Error`] belongs to.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, unbounded};
use pocketvlm_engine::{
    Command, Engine, Event, GenerateRequest, LoadOptions, ModelInfo, StopReason, TurnMetrics,
};

/// What the loaded model is doing, as far as the UI knows.
#[derive(Clone, Debug)]
pub enum ModelState {
    None,
    Loading {
        path: PathBuf,
        stage: String,
        fraction: f32,
        started: Instant,
    },
    Ready(Box<ModelInfo>),
}

/// What happened, for the panels.
#[derive(Debug)]
pub enum Update {
    Loaded(Box<ModelInfo>),
    LoadFailed {
        path: PathBuf,
        error: String,
    },
    Unloaded,
    /// The prompt was tokenised; image encoding and prefill run now.
    Started {
        prompt_tokens: usize,
    },
    Token {
        text: String,
        at: Instant,
    },
    Finished {
        text: String,
        stop: StopReason,
        metrics: TurnMetrics,
    },
    GenerateFailed(String),
    /// The engine thread is gone (it crashed); [`EngineLink::restart`] brings a new one.
    EngineDied,
}

#[derive(Debug)]
enum Sent {
    Load(PathBuf),
    Unload,
    Generate,
}

enum Pumped {
    /// An event, and when the pump received it (token timing for the live plot).
    Event(Box<Event>, Instant),
    Disconnected,
}

pub struct EngineLink {
    engine: Option<Engine>,
    /// Which engine the pumped events come from; events of a replaced engine are dropped.
    epoch: u64,
    pumped: Receiver<(u64, Pumped)>,
    pump_tx: Sender<(u64, Pumped)>,
    in_flight: VecDeque<Sent>,
    pub model: ModelState,
    alive: bool,
    ctx: egui::Context,
}

impl EngineLink {
    pub fn new(ctx: &egui::Context) -> Self {
        let (pump_tx, pumped) = unbounded();
        let mut link = EngineLink {
            engine: None,
            epoch: 0,
            pumped,
            pump_tx,
            in_flight: VecDeque::new(),
            model: ModelState::None,
            alive: false,
            ctx: ctx.clone(),
        };
        link.start();
        link
    }

    fn start(&mut self) {
        self.epoch += 1;
        let engine = Engine::spawn();
        let events = engine.events().clone();
        let tx = self.pump_tx.clone();
        let ctx = self.ctx.clone();
        let epoch = self.epoch;
        let pump = std::thread::Builder::new()
            .name("pocketvlm-events".into())
            .spawn(move || {
                loop {
                    let msg = match events.recv() {
                        Ok(e) => Pumped::Event(Box::new(e), Instant::now()),
                        Err(_) => Pumped::Disconnected,
                    };
                    let done = matches!(msg, Pumped::Disconnected);
                    if tx.send((epoch, msg)).is_err() {
                        break;
                    }
                    ctx.request_repaint();
                    if done {
                        break;
                    }
                }
            });
        self.alive = pump.is_ok();
        self.engine = Some(engine);
        self.in_flight.clear();
        self.model = ModelState::None;
    }

    /// Replaces the engine thread with a new one (no model loaded). The old one is shut
    /// down off the UI thread, since it may be in the middle of a long load.
    pub fn restart(&mut self) {
        if let Some(old) = self.engine.take() {
            old.cancel();
            let _ = std::thread::Builder::new()
                .name("pocketvlm-engine-shutdown".into())
                .spawn(move || drop(old));
        }
        self.start();
    }

    pub fn is_alive(&self) -> bool {
        self.alive
    }

    pub fn is_generating(&self) -> bool {
        self.in_flight.iter().any(|s| matches!(s, Sent::Generate))
    }

    pub fn is_loading(&self) -> bool {
        self.in_flight.iter().any(|s| matches!(s, Sent::Load(_)))
    }

    pub fn is_busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    pub fn info(&self) -> Option<&ModelInfo> {
        match &self.model {
            ModelState::Ready(info) => Some(info),
            _ => None,
        }
    }

    fn send(&mut self, command: Command, what: Sent) -> Result<(), String> {
        if !self.alive {
            return Err("the engine has stopped; restart it first".into());
        }
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| "the engine is not running".to_string())?;
        engine.send(command).map_err(|e| e.to_string())?;
        self.in_flight.push_back(what);
        Ok(())
    }

    /// Loads a model (a generation still running is stopped first).
    pub fn load(&mut self, path: &Path, options: LoadOptions) -> Result<(), String> {
        self.cancel();
        self.send(
            Command::Load {
                path: path.to_path_buf(),
                options,
            },
            Sent::Load(path.to_path_buf()),
        )?;
        self.model = ModelState::Loading {
            path: path.to_path_buf(),
            stage: "Waiting".into(),
            fraction: 0.0,
            started: Instant::now(),
        };
        Ok(())
    }

    pub fn unload(&mut self) -> Result<(), String> {
        self.cancel();
        self.send(Command::Unload, Sent::Unload)
    }

    /// Encode-while-typing: has the engine read, preprocess and start encoding an attached
    /// image now, so the answer does not wait for the vision tower. Not a tracked command:
    /// the engine answers with its own events, and a failure here is reported again by the
    /// message that carries the image.
    pub fn prepare_image(&mut self, path: &Path) {
        if !self.alive || !matches!(&self.model, ModelState::Ready(i) if i.image_tokens.is_some()) {
            return;
        }
        if let Some(engine) = self.engine.as_mut() {
            let _ = engine.send(Command::PrepareImage {
                path: path.to_path_buf(),
            });
        }
    }

    pub fn generate(&mut self, request: GenerateRequest) -> Result<(), String> {
        self.send(Command::Generate(request), Sent::Generate)
    }

    /// Makes the engine thread panic, as a bug in model code would: for tests of the panic
    /// isolation (the panic must reach the user as an error, with the app still usable).
    #[doc(hidden)]
    pub fn debug_panic(&mut self, message: &str) -> Result<(), String> {
        self.send(Command::DebugPanic(message.into()), Sent::Generate)
    }

    /// Stops every generation sent so far, within one decode step.
    pub fn cancel(&self) {
        if let Some(e) = &self.engine {
            e.cancel();
        }
    }

    /// Everything that happened since the last call.
    pub fn poll(&mut self) -> Vec<Update> {
        let mut out = Vec::new();
        while let Ok((epoch, msg)) = self.pumped.try_recv() {
            if epoch != self.epoch {
                continue;
            }
            match msg {
                Pumped::Event(e, at) => self.on_event(*e, at, &mut out),
                Pumped::Disconnected => {
                    self.alive = false;
                    self.in_flight.clear();
                    self.model = ModelState::None;
                    out.push(Update::EngineDied);
                }
            }
        }
        out
    }

    fn on_event(&mut self, event: Event, at: Instant, out: &mut Vec<Update>) {
        match event {
            Event::Loading { path } => {
                self.model = ModelState::Loading {
                    path,
                    stage: "Starting".into(),
                    fraction: 0.0,
                    started: Instant::now(),
                };
            }
            Event::LoadProgress { stage, fraction } => {
                if let ModelState::Loading {
                    stage: s,
                    fraction: f,
                    ..
                } = &mut self.model
                {
                    *s = stage;
                    *f = fraction.clamp(0.0, 1.0);
                }
            }
            Event::Loaded(info) => {
                self.pop(|s| matches!(s, Sent::Load(_)));
                self.model = ModelState::Ready(Box::new(info.clone()));
                out.push(Update::Loaded(Box::new(info)));
            }
            Event::Unloaded => {
                self.pop(|s| matches!(s, Sent::Unload));
                self.model = ModelState::None;
                out.push(Update::Unloaded);
            }
            // Preparation is best effort: the message carrying the image reports any
            // problem, and the turn's timeline shows what ran ahead of it.
            Event::ImagePrepared { .. } | Event::ImagePrepareFailed { .. } => {}
            Event::Started { prompt_tokens } => out.push(Update::Started { prompt_tokens }),
            Event::Token { text, .. } => out.push(Update::Token { text, at }),
            Event::Finished {
                text,
                stop,
                metrics,
            } => {
                self.pop(|s| matches!(s, Sent::Generate));
                out.push(Update::Finished {
                    text,
                    stop,
                    metrics,
                });
            }
            Event::Error(e) => {
                let error = e.to_string();
                match self.in_flight.pop_front() {
                    Some(Sent::Load(path)) => {
                        self.model = ModelState::None;
                        out.push(Update::LoadFailed { path, error });
                    }
                    Some(Sent::Generate) => {
                        // A panic inside the model unloads it (see the engine's worker).
                        if matches!(e, pocketvlm_engine::Error::EngineStopped(_)) {
                            self.model = ModelState::None;
                        }
                        out.push(Update::GenerateFailed(error));
                    }
                    Some(Sent::Unload) | None => {
                        self.model = ModelState::None;
                        out.push(Update::GenerateFailed(error));
                    }
                }
            }
        }
    }

    /// Removes the oldest command of a kind from the queue (the one the event answers).
    fn pop(&mut self, kind: impl Fn(&Sent) -> bool) {
        if let Some(i) = self.in_flight.iter().position(kind) {
            self.in_flight.remove(i);
        }
    }

    /// Stops the engine (at exit): cancels what runs and lets the thread end on its own.
    pub fn shutdown(&mut self) {
        if let Some(e) = self.engine.take() {
            e.cancel();
            let _ = std::thread::Builder::new()
                .name("pocketvlm-engine-shutdown".into())
                .spawn(move || drop(e));
        }
    }
}

impl Drop for EngineLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}
