//! Models, written once against the [`Backend`] ops.
//!
//! - `llm/`: decoder-only language models (LLaMA/Qwen2/Phi-3 in `llama.rs`, Phi-2).
//! - `vision.rs`: CLIP and SigLIP towers; `projector.rs`: MLP, LDP, LDPv2.
//! - `vlm.rs`: the driver that splices image embeddings into the token sequence and
//!   implements [`Model`], the backend-erased interface the generation loop drives.

pub mod config;
pub mod downsample;
pub mod llm;
pub mod projector;
pub mod spec;
pub mod synthetic;
pub mod vision;
pub mod vlm;

use std::ops::Range;

use crate::backend::Backend;
use crate::error::Result;
use crate::load::source::{TensorSource, tensor_shaped};
use crate::tensor::DType;
use config::LlmConfig;

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (generation).
    Last,
    /// Every position's, `[positions × vocab]` (oracle comparisons, `pocketvlm logits`).
    All,
}

/// An encoded image held by the model (its projected embedding rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageId(pub u64);

/// A piece of model input: text tokens, or rows of an encoded image's embeddings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    Tokens(&'a [u32]),
    Image { id: ImageId, rows: Range<usize> },
}

impl Segment<'_> {
    /// Positions this segment occupies.
    pub fn len(&self) -> usize {
        match self {
            Segment::Tokens(t) => t.len(),
            Segment::Image { rows, .. } => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits `input` into consecutive pieces of at most `max` positions each.
pub fn split_segments<'a>(input: &[Segment<'a>], max: usize) -> Vec<Vec<Segment<'a>>> {
    let mut pieces = vec![];
    let mut current: Vec<Segment<'a>> = vec![];
    let mut room = max;
    for seg in input {
        let mut seg = seg.clone();
        while !seg.is_empty() {
            let take = seg.len().min(room);
            let (head, tail) = match &seg {
                Segment::Tokens(t) => (Segment::Tokens(&t[..take]), Segment::Tokens(&t[take..])),
                Segment::Image { id, rows } => (
                    Segment::Image {
                        id: *id,
                        rows: rows.start..rows.start + take,
                    },
                    Segment::Image {
                        id: *id,
                        rows: rows.start + take..rows.end,
                    },
                ),
            };
            current.push(head);
            seg = tail;
            room -= take;
            if room == 0 {
                pieces.push(std::mem::take(&mut current));
                room = max;
            }
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// A loaded model with its KV cache and encoded images: what sessions and the generation
/// loop drive, independent of the backend.
pub trait Model: Send {
    fn llm_config(&self) -> &LlmConfig;
    /// Embedding rows one image becomes (`None` for text-only models).
    fn image_tokens(&self) -> Option<usize>;
    /// The square pixel size the vision tower takes (`None` for text-only models).
    fn image_size(&self) -> Option<usize>;
    /// Runs the vision tower and projector on normalised CHW pixels and keeps the result.
    fn encode_image(&mut self, pixels: &[f32]) -> Result<ImageId>;
    /// How the last [`Model::encode_image`] split its time between the vision tower and the
    /// projector (`None` when the model does not measure it).
    fn last_encode_times(&self) -> Option<crate::metrics::EncodeTimes> {
        None
    }
    /// Registers an image given as its vision passes (normalised CHW pixels: one for a
    /// fixed-resolution tower; the tiles then the thumbnail for a tiled one) and starts
    /// encoding it: on the vision thread when there is one (this returns at once), else
    /// batch by batch when [`Model::forward`] first needs its rows. Its embedding rows are
    /// the passes' projector rows in order.
    fn begin_image(&mut self, passes: Vec<Vec<f32>>) -> Result<ImageId>;
    /// Waits until every pass of the image is encoded (encoding them here if need be).
    fn wait_image(&mut self, id: ImageId) -> Result<()>;
    /// Embedding rows of an image (`None` if unknown).
    fn image_rows(&self, id: ImageId) -> Option<usize>;
    /// Time spent on an image so far, and whether it is fully encoded.
    fn image_times(&mut self, id: ImageId) -> Option<(crate::metrics::EncodeTimes, bool)>;
    /// The encode batches finished since the last call (for the turn timeline).
    fn take_encode_spans(&mut self) -> Vec<vlm::EncodeSpan>;
    /// The vision tower's selected-layer features for CHW pixels, `[tokens × width]`.
    fn vision_features(&mut self, pixels: &[f32]) -> Result<Vec<f32>>;
    /// The projected embedding rows of an encoded image, `[image_tokens × hidden]`.
    fn image_embeddings(&self, id: ImageId) -> Result<Vec<f32>>;
    fn release_image(&mut self, id: ImageId);
    /// Runs `input` at positions `pos0..`, appending to the KV cache (entries past `pos0`
    /// are replaced), and returns the requested logits.
    fn forward(&mut self, input: &[Segment], pos0: usize, logits: Logits) -> Result<Vec<f32>>;
    /// [`Model::forward`] for greedy decoding: the argmax id of the last position's logits
    /// (first on ties). Backends compute it where the logits are, so a GPU reads back one id
    /// instead of the vocabulary.
    fn forward_argmax(&mut self, input: &[Segment], pos0: usize) -> Result<u32> {
        let logits = self.forward(input, pos0, Logits::Last)?;
        Ok(crate::backend::cpu::scalar::argmax(&logits))
    }
    /// Positions the KV cache can hold.
    fn context_len(&self) -> usize;
    /// Bytes of weights held by the backend.
    fn weight_bytes(&self) -> usize;
    /// Bytes currently allocated for the KV cache.
    fn kv_bytes(&self) -> usize;
    /// Weight bytes one decoded token reads (the language model, without an untied
    /// embedding table, of which it reads one row).
    fn decode_weight_bytes(&self) -> usize {
        self.weight_bytes()
    }
    fn backend_name(&self) -> String;
    /// The GPU adapter the language model runs on (`None` on the CPU).
    fn adapter(&self) -> Option<String> {
        self.backend_name()
            .strip_prefix("gpu: ")
            .map(str::to_string)
    }
    /// The vision tower's backend when it differs from the language model's.
    fn vision_backend_name(&self) -> Option<String> {
        None
    }
}

/// Reads a module's weights by name from a checkpoint, the way candle's `VarBuilder` does:
/// `w.pp("model.layers.0").get("self_attn.q_proj.weight", &[out, in])`. Matrices read with
/// [`WeightLoader::matrix`] are quantised at load when the loader has a target format.
pub struct WeightLoader<'a, B: Backend> {
    pub src: &'a dyn TensorSource,
    pub backend: &'a B,
    prefix: String,
    /// Store matrices in this format (quantise-on-load); `None` keeps them as stored.
    quant: Option<DType>,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub fn new(src: &'a dyn TensorSource, backend: &'a B) -> Self {
        WeightLoader {
            src,
            backend,
            prefix: String::new(),
            quant: None,
        }
    }

    /// This loader with matrices stored as `quant` (`None`: as in the file).
    pub fn with_quant(mut self, quant: Option<DType>) -> Self {
        self.quant = quant;
        self
    }

    /// A loader for the sub-module `name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        WeightLoader {
            src: self.src,
            backend: self.backend,
            prefix,
            quant: self.quant,
        }
    }

    /// `pp(prefix)` unless the prefix is empty.
    pub fn pp_opt(&self, prefix: &str) -> Self {
        if prefix.is_empty() {
            WeightLoader {
                src: self.src,
                backend: self.backend,
                prefix: self.prefix.clone(),
                quant: self.quant,
            }
        } else {
            self.pp(prefix)
        }
    }

    /// The format matrices are converted to at load (`None`: as stored).
    pub fn quant(&self) -> Option<DType> {
        self.quant
    }

    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(&self.name(name))
    }

    /// The host tensor `name` with exactly `shape` (size-1 dimensions may differ on disk).
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<crate::tensor::HostTensor> {
        tensor_shaped(self.src, &self.name(name), shape)
    }

    /// The weight `name` with exactly `shape`, as stored.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        self.backend.weight(self.host(name, shape)?)
    }

    /// A weight matrix `[out, in]` (a linear layer, an embedding table), converted to the
    /// loader's quantisation target when it has one and the rows are whole blocks.
    pub fn matrix(&self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.host(name, shape)?;
        self.backend
            .weight(crate::quant::convert_matrix(t, self.quant))
    }

    /// The output head (or embeddings tied to it): llama.cpp's rule keeps it at 8 bits when
    /// the rest goes to 4 bits, because every logit goes through it; a head already stored
    /// in a block format stays as stored.
    pub fn head_matrix(&self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.host(name, shape)?;
        let target = match self.quant {
            Some(DType::Q4_0 | DType::Q4_1) if t.dtype.is_quantized() => None,
            Some(DType::Q4_0 | DType::Q4_1) => Some(DType::Q8_0),
            other => other,
        };
        self.backend.weight(crate::quant::convert_matrix(t, target))
    }

    /// Rows `start..start + count` of the matrix `name` (whose full shape is `shape`),
    /// quantised like [`WeightLoader::matrix`].
    pub fn matrix_rows(
        &self,
        name: &str,
        shape: &[usize],
        start: usize,
        count: usize,
    ) -> Result<B::Weight> {
        let t = self.host(name, shape)?.slice_rows(start, count);
        self.backend
            .weight(crate::quant::convert_matrix(t, self.quant))
    }

    /// Rows `start..start + count` of the 1-D or 2-D tensor `name`, as stored.
    pub fn get_rows(
        &self,
        name: &str,
        shape: &[usize],
        start: usize,
        count: usize,
    ) -> Result<B::Weight> {
        self.backend
            .weight(self.host(name, shape)?.slice_rows(start, count))
    }

    /// `name` with exactly `shape`, converted to f32 and viewed as `as_shape` (small tensors
    /// kernels read element-wise: conv kernels, embeddings added once per image).
    pub fn get_f32(&self, name: &str, shape: &[usize], as_shape: &[usize]) -> Result<B::Weight> {
        let t = self.host(name, shape)?;
        self.backend.weight(t.to_f32().reshape(as_shape.to_vec()))
    }

    /// The tensor `name` as f32 values on the host.
    pub fn host_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.host(name, shape)?.to_f32_vec())
    }
}
