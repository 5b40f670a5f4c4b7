//! PocketVLM engine: loads small language and vision-language models and runs them on the
//! CPU (and, later, the GPU).
//!
//! Two ways in:
//! - [`Engine`]: a thread that owns the model, driven by [`Command`]s and answering with
//!   [`Event`]s over channels — what the GUI and `pocketvlm run` use.
//! - [`Session`]: the same operations called synchronously (`pocketvlm logits`, tests).
//!
//! Layering, top to bottom: `worker`/`session` → `generate` → `model` → `backend`
//! (kernels). Lower layers never call upward.

pub mod backend;
pub mod bench;
pub mod chat;
pub mod error;
pub mod generate;
pub mod image;
pub mod load;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod quant;
pub mod quantize;
pub mod session;
pub mod tensor;
pub mod worker;

pub use chat::{Message, Role};
pub use error::{Error, Result};
pub use generate::{SamplingParams, StopReason};
pub use metrics::TurnMetrics;
pub use session::{
    BackendKind, ImageHash, ImageTiming, LoadOptions, ModelInfo, PreparedImage, Prompt, PromptPart,
    Session,
};
pub use worker::{Command, Engine, Event, GenerateRequest};
