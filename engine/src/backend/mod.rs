//! Compute backends.
//!
//! The [`Backend`] trait is the list of ops the models are written in: it says *what* is
//! computed (shapes, semantics). Each backend says *how*, in its own module: `cpu` (a scalar
//! reference for every op plus the fast paths) and `gpu` (wgpu compute shaders). Models are
//! generic over the backend and never see a kernel, a thread or a GPU buffer.
//!
//! Tensors are f32 activations, row-major `[rows, cols]`, allocated with a row capacity and
//! used with a current row count (so a decode step reuses the prefill buffers). Image-shaped
//! activations are `[height × width, channels]` (one row per pixel, channels last). Weights
//! stay in the format they were loaded in (f32/f16/bf16 now, ggml blocks later); kernels
//! convert inside the dot product.

pub mod cpu;
pub mod gpu;

use crate::error::Result;
use crate::model::config::RopeStyle;
use crate::tensor::HostTensor;

/// Head layout and masking of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
    /// Causal (decoder) or bidirectional over every key row (vision encoder).
    pub causal: bool,
    /// With `causal`: a query at position p sees keys at positions > p − window only.
    pub window: Option<usize>,
}

/// Where rotary embedding applies inside each head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeShape {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Leading dimensions of each head that rotate (the rest pass through).
    pub rotary_dim: usize,
    pub style: RopeStyle,
}

/// Element-wise activation functions, named as in transformers' `ACT2FN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (`silu`, `swish`).
    Silu,
    /// Exact GELU with erf (`gelu`, PyTorch `nn.GELU()`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x · sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    Relu,
    Hardswish,
    Hardsigmoid,
}

impl Activation {
    /// Parses a transformers `hidden_act` name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }
}

/// Height and width of an image-shaped activation (`rows = h × w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub fn square(side: usize) -> Self {
        Grid { h: side, w: side }
    }
    pub fn cells(self) -> usize {
        self.h * self.w
    }
}

/// One projection of [`Backend::matmul_many`]: its weight, bias and output.
pub type Projection<'a, B> = (
    &'a <B as Backend>::Weight,
    Option<&'a <B as Backend>::Weight>,
    &'a mut <B as Backend>::Tensor,
);

pub trait Backend: Clone + Send + Sync + 'static {
    /// f32 activations `[rows, cols]` on the device.
    type Tensor: Send;
    /// A weight in its storage format on the device.
    type Weight: Send + Sync;

    /// Human-readable description ("cpu (2 threads)").
    fn name(&self) -> String;

    /// Makes a host tensor usable by this backend (zero-copy where possible).
    fn weight(&self, t: HostTensor) -> Result<Self::Weight>;
    /// Bytes the weight occupies on the device.
    fn weight_bytes(&self, w: &Self::Weight) -> usize;

    /// A zeroed tensor with room for `rows` rows of `cols` values; its row count is `rows`.
    fn tensor(&self, rows: usize, cols: usize) -> Self::Tensor;
    /// An empty KV-cache tensor of `cols` values per row: grown by `reserve_rows`, written
    /// by `store_kv` and read by `attention` (and `read`) only, so a backend may keep it in
    /// a narrower format.
    fn kv_tensor(&self, cols: usize) -> Self::Tensor {
        self.tensor(0, cols)
    }
    /// Bytes the current rows of `t` occupy.
    fn tensor_bytes(&self, t: &Self::Tensor) -> usize {
        self.rows(t) * self.cols(t) * 4
    }
    fn rows(&self, t: &Self::Tensor) -> usize;
    fn cols(&self, t: &Self::Tensor) -> usize;
    /// Sets the row count (at most the capacity) without touching the data.
    fn set_rows(&self, t: &mut Self::Tensor, rows: usize);
    /// Grows the row capacity to at least `rows`, keeping the contents.
    fn reserve_rows(&self, t: &mut Self::Tensor, rows: usize);
    /// Uploads `data` (`rows × cols` values); the row count becomes `data.len() / cols`.
    fn write(&self, t: &mut Self::Tensor, data: &[f32]);
    /// Downloads the current rows.
    fn read(&self, t: &Self::Tensor) -> Vec<f32>;
    /// Waits until the ops issued so far have run, so that a timing around them is honest
    /// (backends that run each op when it is called have nothing to wait for).
    fn sync(&self) {}
    /// `dst[dst_row..][..count] = src[src_row..][..count]`; `dst` must already have the rows.
    fn copy_rows(
        &self,
        src: &Self::Tensor,
        src_row: usize,
        count: usize,
        dst: &mut Self::Tensor,
        dst_row: usize,
    );

    /// `out[row0 + i] = table[ids[i]]`; ids are below the table's row count (callers check)
    /// and `out` already has the rows.
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Tensor, row0: usize);
    /// Root-mean-square norm of each row, times `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32, out: &mut Self::Tensor);
    /// Layer norm of each row (biased variance), times `weight`, plus `bias`.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Weight,
        bias: &Self::Weight,
        eps: f32,
        out: &mut Self::Tensor,
    );
    /// `out = x · wᵀ (+ bias)` for `w` of shape `[out_features, in_features]`.
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Tensor,
    );
    /// [`Backend::matmul`] of one activation with several weights (a layer's q, k and v, or
    /// its gate and up): `(weight, bias, out)` each. A backend may run them as one job; by
    /// default, one `matmul` each.
    fn matmul_many(&self, x: &Self::Tensor, projs: &mut [Projection<'_, Self>]) {
        for (w, bias, out) in projs.iter_mut() {
            self.matmul(x, w, *bias, out);
        }
    }
    /// Rotates each head of each row in place; row `r` is at position `pos0 + r`.
    /// `cos`/`sin` are tables `[positions, rotary_dim / 2]`.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        cos: &Self::Tensor,
        sin: &Self::Tensor,
        shape: RopeShape,
        pos0: usize,
    );
    /// Writes the rows of `src` into `cache` at rows `pos0..pos0 + src.rows`.
    fn store_kv(&self, src: &Self::Tensor, cache: &mut Self::Tensor, pos0: usize);
    /// Attention of the query rows over the key/value rows. Causal: query row `t` is at
    /// position `pos0 + t` and sees keys `0..=pos0 + t` (within the window). Bidirectional:
    /// every query sees every key row.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: AttentionShape,
        pos0: usize,
        out: &mut Self::Tensor,
    );
    /// `x = act(x)` element-wise.
    fn activate(&self, x: &mut Self::Tensor, act: Activation);
    /// `out = act(gate) * up` (SwiGLU and friends).
    fn gated(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        act: Activation,
        out: &mut Self::Tensor,
    );
    /// `x += y`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// `x[r][c] *= scale[0][c]` (per-channel scaling, squeeze-excitation).
    fn mul_channels(&self, x: &mut Self::Tensor, scale: &Self::Tensor);
    /// `out[0][c] = mean over rows of x[r][c]` (global average pooling).
    fn mean_rows(&self, x: &Self::Tensor, out: &mut Self::Tensor);
    /// Depthwise 3×3 convolution, zero padding 1, of an image-shaped activation. `weight`
    /// is `[channels, 9]` f32 (row-major 3×3 per channel).
    fn depthwise_conv3x3(
        &self,
        x: &Self::Tensor,
        grid: Grid,
        weight: &Self::Weight,
        bias: Option<&Self::Weight>,
        stride: usize,
        out: &mut Self::Tensor,
    );
    /// PyTorch `AdaptiveAvgPool2d(out_grid)` of an image-shaped activation.
    fn adaptive_avg_pool(
        &self,
        x: &Self::Tensor,
        grid: Grid,
        out_grid: Grid,
        out: &mut Self::Tensor,
    );
    /// Softmax of each row, in place.
    fn softmax(&self, x: &mut Self::Tensor);
    /// The index of the largest value of each row, read back to the host: the first one on
    /// ties, NaN and −∞ counting as the lowest finite value. Greedy decoding reads these ids
    /// instead of the logits (on a GPU: 4 bytes instead of the vocabulary).
    fn argmax(&self, x: &Self::Tensor) -> Vec<u32>;
}
