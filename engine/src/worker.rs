//! The engine thread: owns the loaded [`Session`], serves [`Command`]s in order and reports
//! [`Event`]s. Callers (GUI, CLI) never block on model work and never touch tensors.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::chat::Message;
use crate::error::{Error, Result};
use crate::generate::{SamplingParams, StopReason};
use crate::metrics::{Span, Stage, TurnMetrics, ms_since};
use crate::session::{LoadOptions, ModelInfo, PreparedImage, Session};

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub messages: Vec<Message>,
    pub params: SamplingParams,
    /// Use the last message's text as the prompt, without the chat template.
    pub raw: bool,
}

#[derive(Clone, Debug)]
pub enum Command {
    Load {
        path: PathBuf,
        options: LoadOptions,
    },
    Unload,
    /// Encode-while-typing: read, preprocess and start encoding an image as soon as it is
    /// attached, so the answer to the message that carries it does not wait for the vision
    /// tower. The result is kept by content hash; the engine answers with
    /// [`Event::ImagePrepared`] (or [`Event::ImagePrepareFailed`]), never [`Event::Error`].
    PrepareImage {
        path: PathBuf,
    },
    Generate(GenerateRequest),
    Shutdown,
    /// Panics inside the engine thread with this message: for tests of the panic isolation;
    /// never sent in normal use.
    #[doc(hidden)]
    DebugPanic(String),
}

impl Command {
    /// Whether `Engine::cancel` applies: loads and generations.
    fn is_cancellable(&self) -> bool {
        matches!(self, Command::Load { .. } | Command::Generate(_))
    }
}

#[derive(Debug)]
pub enum Event {
    Loading {
        path: PathBuf,
    },
    /// How far the load has come: a stage name (see [`crate::session::load_stage`]) and the
    /// fraction of the whole load done, from 0 to 1.
    LoadProgress {
        stage: String,
        fraction: f32,
    },
    Loaded(ModelInfo),
    Unloaded,
    /// An image was preprocessed and its encoding started (or it was already cached).
    ImagePrepared {
        path: PathBuf,
        image: PreparedImage,
    },
    /// Preparing an image failed (no model, not a vision model, unreadable file). The
    /// message that carries it will report the problem again if it is sent.
    ImagePrepareFailed {
        path: PathBuf,
        error: String,
    },
    /// The prompt was tokenised; prefill starts.
    Started {
        prompt_tokens: usize,
    },
    /// Newly completed text (may be empty while a multi-byte character is incomplete;
    /// `id` is `u32::MAX` for text flushed at the end that belongs to no single token).
    Token {
        id: u32,
        text: String,
    },
    Finished {
        text: String,
        stop: StopReason,
        metrics: TurnMetrics,
    },
    Error(Error),
}

/// Handle to the engine thread. Dropping it shuts the thread down.
pub struct Engine {
    commands: Sender<Command>,
    events: Receiver<Event>,
    /// Load and Generate commands numbered from 1; every one numbered ≤ this is cancelled.
    cancel_upto: Arc<AtomicU64>,
    cancellable_sent: u64,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    pub fn spawn() -> Engine {
        let (commands, command_rx) = unbounded();
        let (event_tx, events) = unbounded();
        let cancel_upto = Arc::new(AtomicU64::new(0));
        let cancel = cancel_upto.clone();
        let thread = std::thread::Builder::new()
            .name("pocketvlm-engine".into())
            .spawn(move || Worker::new(event_tx, cancel).run(command_rx))
            .expect("spawning the engine thread");
        Engine {
            commands,
            events,
            cancel_upto,
            cancellable_sent: 0,
            thread: Some(thread),
        }
    }

    pub fn send(&mut self, command: Command) -> Result<()> {
        if command.is_cancellable() {
            self.cancellable_sent += 1;
        }
        self.commands
            .send(command)
            .map_err(|_| Error::EngineStopped("the engine thread has exited".into()))
    }

    /// Stops every load and generation requested so far (running or queued): a generation
    /// within one decode step or prefill chunk, a load before its next tensor. A cancelled
    /// load reports `Event::Error(Error::Cancelled)` and leaves no model loaded.
    pub fn cancel(&self) {
        self.cancel_upto
            .fetch_max(self.cancellable_sent, Ordering::SeqCst);
    }

    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Whether the engine thread is still running (it ends only on shutdown, or if it died).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel();
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    events: Sender<Event>,
    cancel_upto: Arc<AtomicU64>,
    /// The number of the Load or Generate command being handled (see `Engine::cancel`).
    current: u64,
    session: Option<Session>,
}

impl Worker {
    fn new(events: Sender<Event>, cancel_upto: Arc<AtomicU64>) -> Self {
        Worker {
            events,
            cancel_upto,
            current: 0,
            session: None,
        }
    }

    fn emit(&self, e: Event) {
        // The receiver may be gone (the UI closed); nothing left to tell.
        let _ = self.events.send(e);
    }

    fn run(mut self, commands: Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            if matches!(command, Command::Shutdown) {
                break;
            }
            // A panic in model code must not take the application down: report it, drop
            // the (possibly inconsistent) model, and keep serving commands.
            let outcome = catch_unwind(AssertUnwindSafe(|| self.handle(command)));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.emit(Event::Error(e)),
                Err(panic) => {
                    self.session = None;
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    self.emit(Event::Error(Error::EngineStopped(format!(
                        "internal error, model unloaded: {msg}"
                    ))));
                }
            }
        }
    }

    /// Whether the command being handled has been cancelled.
    fn cancelled(&self) -> impl Fn() -> bool + use<> {
        let (cancel_upto, current) = (self.cancel_upto.clone(), self.current);
        move || cancel_upto.load(Ordering::SeqCst) >= current
    }

    fn handle(&mut self, command: Command) -> Result<()> {
        if command.is_cancellable() {
            self.current += 1;
        }
        match command {
            Command::Load { path, options } => {
                self.session = None;
                self.emit(Event::Loading { path: path.clone() });
                let events = self.events.clone();
                let session = Session::load_cancellable(
                    &path,
                    &options,
                    &mut |stage, fraction| {
                        let _ = events.send(Event::LoadProgress {
                            stage: stage.to_string(),
                            fraction,
                        });
                    },
                    &self.cancelled(),
                )?;
                self.emit(Event::Loaded(session.info().clone()));
                self.session = Some(session);
            }
            Command::Unload => {
                self.session = None;
                self.emit(Event::Unloaded);
            }
            Command::PrepareImage { path } => {
                let prepared = match self.session.as_mut() {
                    None => Err(Error::NoModel),
                    Some(s) if !s.is_vision_model() => Err(Error::InvalidArgument(
                        "the loaded model is text-only".into(),
                    )),
                    Some(s) => s.prepare_image(&path),
                };
                self.emit(match prepared {
                    Ok(image) => Event::ImagePrepared { path, image },
                    Err(e) => Event::ImagePrepareFailed {
                        path,
                        error: e.to_string(),
                    },
                });
            }
            Command::Generate(req) => {
                self.generate(req)?;
            }
            Command::Shutdown => {}
            Command::DebugPanic(msg) => panic!("{msg}"),
        }
        Ok(())
    }

    fn generate(&mut self, req: GenerateRequest) -> Result<()> {
        let start = std::time::Instant::now();
        let cancelled = self.cancelled();
        let session = self.session.as_mut().ok_or(Error::NoModel)?;
        let prompt = session.prompt(&req.messages, req.raw)?;
        let tokenize_ms = ms_since(start);
        let _ = self.events.send(Event::Started {
            prompt_tokens: prompt.text_tokens().len(),
        });

        let events = self.events.clone();
        let (result, text) =
            session.chat_from(start, &prompt, &req.params, &cancelled, &mut |id, piece| {
                let _ = events.send(Event::Token {
                    id,
                    text: piece.to_string(),
                });
            })?;
        // The turn's clock started when the request was taken: its times include this.
        let mut metrics = result.metrics;
        metrics.tokenize_ms = tokenize_ms;
        // The timeline is in start order; work done ahead of the request comes first.
        let at = metrics.timeline.partition_point(|s| s.start_ms < 0.0);
        metrics.timeline.insert(
            at,
            Span {
                stage: Stage::Tokenize,
                start_ms: 0.0,
                end_ms: tokenize_ms,
                label: format!("{} prompt positions", metrics.prompt_tokens),
                tokens: 0,
            },
        );
        self.emit(Event::Finished {
            text,
            stop: result.stop,
            metrics,
        });
        Ok(())
    }
}
