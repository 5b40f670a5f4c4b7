//! Compute backends.
//!
//! The [`Backend`] trait is the list of ops the models are written in: it says *what* is
//! computed (shapes, semantics). Each backend says *how*, in its own module: `cpu` (a scalar
//! reference for every op plus the fast paths), and later a wgpu backend. Models are generic
//! over the backend and never see a kernel, a thread or a GPU buffer.
//!
//! Tensors are f32 activations, row-major `[rows, cols]`, allocated with a row capacity and
//! used with a current row count (so a decode step reuses the prefill buffers). Weights stay
//! in the format they were loaded in (f32/f16/bf16 now, ggml blocks later); kernels convert
//! inside the dot product.

pub mod cpu;

use crate::error::Result;
use crate::model::config::RopeStyle;
use crate::tensor::HostTensor;

/// Head layout of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k (usually 1/sqrt(head_dim)).
    pub scale: f32,
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

pub trait Backend: Send + 'static {
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
    /// `dst[0..count] = src[start..start+count]` (row ranges); `dst` rows become `count`.
    fn copy_rows(&self, src: &Self::Tensor, start: usize, count: usize, dst: &mut Self::Tensor);

    /// `out[i] = table[ids[i]]`; every id is below the table's row count (checked by callers).
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Tensor);
    /// Root-mean-square norm of each row, times `weight`.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32, out: &mut Self::Tensor);
    /// `out = x · wᵀ (+ bias)` for `w` of shape `[out_features, in_features]`.
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Tensor,
    );
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
    /// Causal attention of the query rows (at positions `pos0..`) over cache rows `0..=pos`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k_cache: &Self::Tensor,
        v_cache: &Self::Tensor,
        shape: AttentionShape,
        pos0: usize,
        out: &mut Self::Tensor,
    );
    /// `out = silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor, out: &mut Self::Tensor);
    /// `x += y`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor);
}
