//! Decoder-only language models. Each family's forward pass lives in its own file;
//! this module holds what they share: the [`Decoder`] interface the VLM driver uses,
//! linear layers, the KV cache and RoPE tables.

pub mod llama;
pub mod phi2;

use super::WeightLoader;
use super::config::{LlmArch, LlmConfig};
use crate::backend::Backend;
use crate::error::Result;

/// Tokens processed per forward chunk: bounds the activation buffers during prefill.
pub const PREFILL_CHUNK: usize = 128;

/// What the driver needs from a language model: embeddings in, hidden states through the
/// layers (filling the KV cache), logits out.
pub trait Decoder<B: Backend>: Send {
    fn config(&self) -> &LlmConfig;
    /// Writes the embeddings of `tokens` into rows `row0..` of `x` (rows already set).
    fn embed(&self, tokens: &[u32], x: &mut B::Tensor, row0: usize);
    /// Runs the rows of `x` (at most [`PREFILL_CHUNK`], at positions `pos0..`) through
    /// every layer in place, storing their keys and values in the cache.
    fn forward(&mut self, x: &mut B::Tensor, pos0: usize);
    /// Final norm and output head over rows `start..start + count` of `x`; the logits stay
    /// on the backend (the caller reads them, or only their argmax).
    fn logits(&mut self, x: &B::Tensor, start: usize, count: usize) -> &B::Tensor;
    fn weight_bytes(&self) -> usize;
    /// Bytes of KV cache in use.
    fn kv_bytes(&self) -> usize;
    /// Weight bytes one decoded token reads (an untied embedding table only by one row).
    fn decode_weight_bytes(&self) -> usize {
        self.weight_bytes()
    }
}

/// Builds the decoder for `cfg.arch` from the tensors under `prefix`.
pub fn load_decoder<B: Backend>(
    be: &B,
    cfg: &LlmConfig,
    w: &WeightLoader<B>,
    context_len: usize,
) -> Result<Box<dyn Decoder<B>>> {
    Ok(match cfg.arch {
        LlmArch::Llama | LlmArch::Qwen2 | LlmArch::Phi3 => {
            Box::new(llama::Llama::load(be.clone(), cfg.clone(), w, context_len)?)
        }
        LlmArch::Phi2 => Box::new(phi2::Phi2::load(be.clone(), cfg.clone(), w, context_len)?),
    })
}

/// A linear layer `y = x·Wᵀ + b`.
pub struct Linear<B: Backend> {
    pub weight: B::Weight,
    pub bias: Option<B::Weight>,
}

impl<B: Backend> Linear<B> {
    pub fn load(w: &WeightLoader<B>, out_f: usize, in_f: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.matrix("weight", &[out_f, in_f])?,
            bias: if bias {
                Some(w.get("bias", &[out_f])?)
            } else {
                None
            },
        })
    }

    /// Rows `start..start + count` of a fused projection's weight (and bias) as their own
    /// layer — zero-copy: the rows of a row-major matrix are contiguous.
    pub fn load_rows(
        w: &WeightLoader<B>,
        fused_out: usize,
        in_f: usize,
        start: usize,
        count: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Linear {
            weight: w.matrix_rows("weight", &[fused_out, in_f], start, count)?,
            bias: if bias {
                Some(w.get_rows("bias", &[fused_out], start, count)?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor, out: &mut B::Tensor) {
        be.matmul(x, &self.weight, self.bias.as_ref(), out);
    }

    /// This layer writing `out`, for [`Backend::matmul_many`].
    pub fn proj<'a>(&'a self, out: &'a mut B::Tensor) -> crate::backend::Projection<'a, B> {
        (&self.weight, self.bias.as_ref(), out)
    }

    pub fn bytes(&self, be: &B) -> usize {
        be.weight_bytes(&self.weight) + self.bias.as_ref().map_or(0, |b| be.weight_bytes(b))
    }
}

/// Per-layer K and V rows, `[positions, kv_heads × head_dim]`, grown on demand.
pub struct KvCache<B: Backend> {
    pub k: Vec<B::Tensor>,
    pub v: Vec<B::Tensor>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(be: &B, layers: usize, kv_dim: usize) -> Self {
        KvCache {
            k: (0..layers).map(|_| be.kv_tensor(kv_dim)).collect(),
            v: (0..layers).map(|_| be.kv_tensor(kv_dim)).collect(),
        }
    }

    pub fn bytes(&self, be: &B) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| be.tensor_bytes(t))
            .sum()
    }
}

/// cos/sin tables `[positions, rotary_dim / 2]` computed as transformers does: f32 inverse
/// frequencies times f32 positions.
pub fn rope_tables<B: Backend>(
    be: &B,
    cfg: &LlmConfig,
    positions: usize,
) -> (B::Tensor, B::Tensor) {
    let inv_freq = cfg.rope.inv_freq();
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let mut tc = be.tensor(positions, half);
    let mut ts = be.tensor(positions, half);
    be.write(&mut tc, &cos);
    be.write(&mut ts, &sin);
    (tc, ts)
}
