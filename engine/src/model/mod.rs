//! Models, written once against the [`Backend`] ops.

pub mod config;
pub mod llama;

use crate::backend::Backend;
use crate::error::Result;
use crate::load::safetensors::Checkpoint;
use config::LlmConfig;

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (generation).
    Last,
    /// Every position's, `[tokens × vocab]` (oracle comparisons, `pocketvlm logits`).
    All,
}

/// A causal language model with its KV cache: what the generation loop drives.
pub trait LanguageModel: Send {
    fn config(&self) -> &LlmConfig;
    /// Runs `tokens` at positions `pos0..`, appending them to the KV cache (whose entries
    /// past `pos0` are overwritten), and returns the requested logits.
    fn forward(&mut self, tokens: &[u32], pos0: usize, logits: Logits) -> Result<Vec<f32>>;
    /// Positions the KV cache can hold.
    fn context_len(&self) -> usize;
    /// Bytes of weights held by the backend.
    fn weight_bytes(&self) -> usize;
    /// Bytes currently allocated for the KV cache.
    fn kv_bytes(&self) -> usize;
    fn backend_name(&self) -> String;
}

/// Reads a module's weights by name from a checkpoint, the way candle's `VarBuilder` does:
/// `w.pp("model.layers.0").get("self_attn.q_proj.weight", &[out, in])`.
pub struct WeightLoader<'a, B: Backend> {
    pub ckpt: &'a Checkpoint,
    pub backend: &'a B,
    prefix: String,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub fn new(ckpt: &'a Checkpoint, backend: &'a B) -> Self {
        WeightLoader {
            ckpt,
            backend,
            prefix: String::new(),
        }
    }

    /// A loader for the sub-module `name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        WeightLoader {
            ckpt: self.ckpt,
            backend: self.backend,
            prefix,
        }
    }

    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(&self.name(name))
    }

    /// The weight `name` with exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.ckpt.tensor_shaped(&self.name(name), shape)?;
        self.backend.weight(t)
    }

    /// `name` if the checkpoint has it (optional biases).
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<B::Weight>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}
