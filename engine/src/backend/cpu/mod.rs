//! The CPU backend: scalar reference kernels (`scalar`, the truth every other kernel is
//! tested against), SIMD flavours chosen at run time (`simd`: x86_64 AVX2/AVX-512-VNNI,
//! aarch64 NEON/dotprod), multiversioned element-wise and attention kernels (`ops`), the
//! quantised/float matmul driver (`matmul`) and a persistent thread pool (`pool`).
//!
//! Weights are the loaded bytes themselves (memory-mapped where the file allowed it); 1-D
//! weights (norms, biases) are converted to f32 once at load because every token reads all
//! of them. Small ops (a decode step's norms, RoPE, residual adds) run on the calling
//! thread: waking the pool would cost more than the work.

pub mod matmul;
pub mod ops;
pub mod pool;
pub mod scalar;
pub mod simd;

use std::sync::{Arc, Mutex};

use super::{Activation, AttentionShape, Backend, Grid, RopeShape};
use crate::error::{Error, Result};
use crate::tensor::{Arena, DType, HostTensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use pool::ThreadPool;
pub use simd::Isa;

/// Element-wise ops smaller than this run on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Activations: `rows × cols` f32 values in a buffer with room for `capacity` rows. A KV
/// cache ([`Backend::kv_tensor`]) keeps its rows in `half` (f16) instead, unless
/// `POCKETVLM_KV=f32`: half the memory, and half the bytes each decoded token reads.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    data: Vec<f32>,
    half: Vec<f16>,
    is_f16: bool,
    rows: usize,
    cols: usize,
}

impl CpuTensor {
    /// The f32 rows (not of an f16 KV cache).
    pub fn as_slice(&self) -> &[f32] {
        debug_assert!(!self.is_f16, "f32 view of an f16 KV cache");
        &self.data[..self.rows * self.cols]
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        debug_assert!(!self.is_f16, "f32 view of an f16 KV cache");
        &mut self.data[..self.rows * self.cols]
    }
    fn capacity(&self) -> usize {
        let len = if self.is_f16 {
            self.half.len()
        } else {
            self.data.len()
        };
        len.checked_div(self.cols).unwrap_or(0)
    }
}

/// How the CPU backend stores the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvPrecision {
    /// f16 (the default, as llama.cpp's): each value rounded once when stored.
    F16,
    /// f32: exact.
    F32,
}

impl KvPrecision {
    /// The default ([`KvPrecision::F16`]), or `POCKETVLM_KV=f16|f32`.
    pub fn from_env() -> Self {
        match std::env::var("POCKETVLM_KV").as_deref() {
            Ok("f32") => KvPrecision::F32,
            _ => KvPrecision::F16,
        }
    }

    /// `f16` or `f32`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f16" => Some(KvPrecision::F16),
            "f32" => Some(KvPrecision::F32),
            _ => None,
        }
    }

    /// Bytes of one cached value.
    pub fn value_bytes(self) -> usize {
        match self {
            KvPrecision::F16 => 2,
            KvPrecision::F32 => 4,
        }
    }
}

struct Inner {
    pool: ThreadPool,
    isa: Isa,
    precision: matmul::ActPrecision,
    kv: KvPrecision,
    acts: Mutex<matmul::ActBuf>,
    /// Whether weights of at least [`ARENA_MIN`] bytes are copied into transparent huge
    /// pages ([`huge_pages_wanted`]).
    huge_pages: bool,
    /// Where weights below `tensor::HUGE_PAGE` go (a new arena when one fills up).
    arena: Mutex<Option<Arc<Arena>>>,
}

/// Bytes of each weight arena (see [`Arena`]).
#[cfg(target_os = "linux")]
const ARENA_BYTES: usize = 16 * crate::tensor::HUGE_PAGE;

/// Weights from this size on go to huge pages: matrices, not norms and biases.
#[cfg(target_os = "linux")]
const ARENA_MIN: usize = 16 << 10;

/// Whether `weight` copies big weights into transparent huge pages: where Linux offers them
/// (`/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`), unless
/// `POCKETVLM_HUGE_PAGES=0` keeps every weight in its file map (shared with the page cache,
/// no copy at load, but a TLB miss every 4 KiB of the weight stream).
fn huge_pages_wanted() -> bool {
    if std::env::var("POCKETVLM_HUGE_PAGES").is_ok_and(|v| v == "0") {
        return false;
    }
    cfg!(target_os = "linux")
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

#[derive(Clone)]
pub struct CpuBackend {
    inner: Arc<Inner>,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint parts of the buffer behind it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Taking `self` makes closures capture the whole (Sync) wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

impl CpuBackend {
    /// A backend running on `threads` threads (default: the physical cores available to
    /// this process), with the best instruction set the CPU has.
    pub fn new(threads: Option<usize>) -> Result<Self> {
        Self::with_isa(threads, Isa::detect())
    }

    /// The same with a given KV-cache format.
    pub fn with_kv(threads: Option<usize>, kv: KvPrecision) -> Result<Self> {
        Self::with_options(threads, Isa::detect(), matmul::ActPrecision::from_env(), kv)
    }

    /// The same with a given instruction-set level (which the CPU must have).
    pub fn with_isa(threads: Option<usize>, isa: Isa) -> Result<Self> {
        Self::with_options(
            threads,
            isa,
            matmul::ActPrecision::from_env(),
            KvPrecision::from_env(),
        )
    }

    /// The same with a given activation precision for quantised weights and KV-cache format.
    pub fn with_options(
        threads: Option<usize>,
        isa: Isa,
        precision: matmul::ActPrecision,
        kv: KvPrecision,
    ) -> Result<Self> {
        if !Isa::available().contains(&isa) {
            return Err(Error::InvalidArgument(format!(
                "this CPU cannot run the {} kernels",
                isa.name()
            )));
        }
        let threads = threads.unwrap_or_else(pool::physical_cores).max(1);
        let pool = ThreadPool::new(threads)
            .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
        Ok(CpuBackend {
            inner: Arc::new(Inner {
                pool,
                isa,
                precision,
                kv,
                acts: Mutex::new(matmul::ActBuf::default()),
                huge_pages: huge_pages_wanted(),
                arena: Mutex::new(None),
            }),
        })
    }

    /// `storage` copied into huge pages: a map of its own from [`HUGE_PAGE`] bytes on, else
    /// the current arena (a new one when it is full); `None` if the memory cannot be had.
    #[cfg(target_os = "linux")]
    fn huge_page_copy(&self, storage: &crate::tensor::Storage) -> Option<crate::tensor::Storage> {
        if storage.bytes().len() >= crate::tensor::HUGE_PAGE {
            return storage.to_huge_pages().ok();
        }
        let mut slot = self.inner.arena.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(copy) = slot.as_ref().and_then(|a| storage.into_arena(a)) {
            return Some(copy);
        }
        let arena = Arc::new(Arena::new(ARENA_BYTES).ok()?);
        let copy = storage.into_arena(&arena);
        *slot = Some(arena);
        copy
    }

    pub fn threads(&self) -> usize {
        self.inner.pool.threads()
    }

    pub fn isa(&self) -> Isa {
        self.inner.isa
    }

    /// The backend's thread pool (benchmarks run their own jobs on it).
    pub fn pool(&self) -> &ThreadPool {
        &self.inner.pool
    }

    fn f32_slice<'a>(&self, w: &'a HostTensor) -> &'a [f32] {
        assert_eq!(
            w.dtype,
            DType::F32,
            "small weights are converted to f32 at load"
        );
        bytemuck::cast_slice(w.bytes())
    }

    /// Runs `f(first_row, rows)` over consecutive row ranges of `data` (`cols` wide) — on
    /// the pool when the op is large, else inline.
    fn rows_mut(&self, data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
        let rows = data.len().checked_div(cols).unwrap_or(0);
        if data.len() < PARALLEL_MIN_ELEMENTS || rows < 2 || self.threads() == 1 {
            return f(0, data);
        }
        let ptr = SendPtr(data.as_mut_ptr());
        let items = rows.min(self.threads() * 4);
        let per = rows.div_ceil(items);
        self.inner.pool.run(|ctx| {
            loop {
                let i = ctx.next();
                let start = i * per;
                if start >= rows {
                    break;
                }
                let end = (start + per).min(rows);
                // SAFETY: each item owns rows start..end of `data`.
                let part = unsafe {
                    std::slice::from_raw_parts_mut(ptr.at(start * cols), (end - start) * cols)
                };
                f(start, part);
            }
        });
    }
}

/// Fills an attention tile's scores with the flavour's dedicated kernel, if it has one
/// (keys in f32, or an f16 cache).
#[allow(clippy::too_many_arguments)]
fn fast_scores<K: ScoreKey>(
    isa: Isa,
    q: &[f32],
    k: &[K],
    shape: AttentionShape,
    pos0: usize,
    h: usize,
    t0: usize,
    nt: usize,
    n_keys: usize,
    scores: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && shape.head_dim.is_multiple_of(16) {
        let hd = shape.head_dim;
        let (q_cols, kv_cols) = (shape.n_heads * hd, shape.n_kv_heads * hd);
        let kvh = h / (shape.n_heads / shape.n_kv_heads);
        let (first, last) = ops::key_span(shape, pos0, t0, nt, n_keys);
        let span = last - first;
        assert!(
            scores.len() >= nt * span && (t0 + nt) * q_cols <= q.len() && last * kv_cols <= k.len()
        );
        // SAFETY: the rows read are inside q and k, the writes inside scores (checked).
        unsafe {
            simd::x86::attn_scores_avx512(
                q.as_ptr().add(t0 * q_cols + h * hd),
                q_cols,
                nt,
                k.as_ptr().add(first * kv_cols + kvh * hd),
                kv_cols,
                span,
                hd,
                shape.scale,
                scores.as_mut_ptr(),
                span,
            );
        }
        return true;
    }
    let _ = (isa, q, k, shape, pos0, h, t0, nt, n_keys, scores);
    false
}

/// A key element type [`fast_scores`] takes.
#[cfg(target_arch = "x86_64")]
trait ScoreKey: simd::x86::KeyElem {}
#[cfg(not(target_arch = "x86_64"))]
trait ScoreKey {}
impl ScoreKey for f32 {}
impl ScoreKey for f16 {}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = HostTensor;

    fn name(&self) -> String {
        format!("cpu ({} threads, {})", self.threads(), self.isa().name())
    }

    fn weight(&self, t: HostTensor) -> Result<HostTensor> {
        if t.shape.len() <= 1 && t.dtype != DType::F32 {
            return Ok(HostTensor::from_f32(t.shape.clone(), &t.to_f32_vec()));
        }
        #[cfg(target_os = "linux")]
        if self.inner.huge_pages && t.bytes().len() >= ARENA_MIN {
            // Without huge pages the weight still works from where it is.
            if let Some(storage) = self.huge_page_copy(&t.storage) {
                return Ok(HostTensor::new(t.dtype, t.shape, storage));
            }
        }
        Ok(t)
    }

    fn weight_bytes(&self, w: &HostTensor) -> usize {
        w.bytes().len()
    }

    fn tensor(&self, rows: usize, cols: usize) -> CpuTensor {
        CpuTensor {
            data: vec![0.0; rows * cols],
            half: Vec::new(),
            is_f16: false,
            rows,
            cols,
        }
    }

    fn kv_tensor(&self, cols: usize) -> CpuTensor {
        CpuTensor {
            is_f16: self.inner.kv == KvPrecision::F16,
            ..self.tensor(0, cols)
        }
    }

    fn tensor_bytes(&self, t: &CpuTensor) -> usize {
        let value = if t.is_f16 {
            std::mem::size_of::<f16>()
        } else {
            std::mem::size_of::<f32>()
        };
        t.rows * t.cols * value
    }

    fn rows(&self, t: &CpuTensor) -> usize {
        t.rows
    }

    fn cols(&self, t: &CpuTensor) -> usize {
        t.cols
    }

    fn set_rows(&self, t: &mut CpuTensor, rows: usize) {
        assert!(
            rows <= t.capacity(),
            "{rows} rows exceed capacity {}",
            t.capacity()
        );
        t.rows = rows;
    }

    fn reserve_rows(&self, t: &mut CpuTensor, rows: usize) {
        if rows > t.capacity() {
            if t.is_f16 {
                t.half.resize(rows * t.cols, f16::ZERO);
            } else {
                t.data.resize(rows * t.cols, 0.0);
            }
        }
    }

    fn write(&self, t: &mut CpuTensor, data: &[f32]) {
        let rows = data.len() / t.cols;
        self.reserve_rows(t, rows);
        t.rows = rows;
        t.as_mut_slice().copy_from_slice(data);
    }

    fn read(&self, t: &CpuTensor) -> Vec<f32> {
        if t.is_f16 {
            let mut out = vec![0.0; t.rows * t.cols];
            t.half[..out.len()].convert_to_f32_slice(&mut out);
            return out;
        }
        t.as_slice().to_vec()
    }

    fn copy_rows(
        &self,
        src: &CpuTensor,
        src_row: usize,
        count: usize,
        dst: &mut CpuTensor,
        dst_row: usize,
    ) {
        assert_eq!(src.cols, dst.cols);
        assert!(src_row + count <= src.rows && dst_row + count <= dst.rows);
        let c = src.cols;
        dst.data[dst_row * c..(dst_row + count) * c]
            .copy_from_slice(&src.data[src_row * c..(src_row + count) * c]);
    }

    fn embed(&self, table: &HostTensor, ids: &[u32], out: &mut CpuTensor, row0: usize) {
        assert!(row0 + ids.len() <= out.rows);
        let c = out.cols;
        scalar::embed(table, ids, &mut out.data[row0 * c..(row0 + ids.len()) * c]);
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &HostTensor, eps: f32, out: &mut CpuTensor) {
        self.set_rows(out, x.rows);
        let (w, isa, xs) = (self.f32_slice(weight), self.isa(), x.as_slice());
        let c = x.cols;
        self.rows_mut(out.as_mut_slice(), c, |r0, o| {
            ops::rms_norm(isa, &xs[r0 * c..r0 * c + o.len()], w, eps, o)
        });
    }

    fn layer_norm(
        &self,
        x: &CpuTensor,
        weight: &HostTensor,
        bias: &HostTensor,
        eps: f32,
        out: &mut CpuTensor,
    ) {
        self.set_rows(out, x.rows);
        let (w, b) = (self.f32_slice(weight), self.f32_slice(bias));
        let (isa, xs, c) = (self.isa(), x.as_slice(), x.cols);
        self.rows_mut(out.as_mut_slice(), c, |r0, o| {
            ops::layer_norm(isa, &xs[r0 * c..r0 * c + o.len()], w, b, eps, o)
        });
    }

    fn matmul_many(&self, x: &CpuTensor, projs: &mut [crate::backend::Projection<'_, Self>]) {
        let k = x.cols;
        for (w, _, out) in projs.iter_mut() {
            let (n_out, wk) = w.rows_cols();
            assert_eq!(
                wk, k,
                "matmul: activation width {k} vs weight {:?}",
                w.shape
            );
            assert_eq!(out.cols, n_out);
            self.set_rows(out, x.rows);
        }
        if projs.len() > matmul::MAX_FUSED {
            for (w, bias, out) in projs.iter_mut() {
                self.matmul(x, w, *bias, out);
            }
            return;
        }
        // Slots on the stack: decode allocates nothing.
        let mut slots: [Option<matmul::Proj>; matmul::MAX_FUSED] = Default::default();
        for (slot, (w, bias, out)) in slots.iter_mut().zip(projs.iter_mut()) {
            *slot = Some(matmul::Proj {
                w,
                bias: bias.map(|b| self.f32_slice(b)),
                out: out.as_mut_slice(),
            });
        }
        let i = &*self.inner;
        matmul::matmul_many(
            &i.pool,
            i.isa,
            i.precision,
            &i.acts,
            x.as_slice(),
            &mut slots,
        );
    }

    fn matmul(
        &self,
        x: &CpuTensor,
        w: &HostTensor,
        bias: Option<&HostTensor>,
        out: &mut CpuTensor,
    ) {
        let (n_out, k) = w.rows_cols();
        assert_eq!(
            x.cols, k,
            "matmul: activation width {} vs weight {:?}",
            x.cols, w.shape
        );
        assert_eq!(out.cols, n_out);
        self.set_rows(out, x.rows);
        let bias = bias.map(|b| self.f32_slice(b));
        let i = &*self.inner;
        matmul::matmul(
            &i.pool,
            i.isa,
            i.precision,
            &i.acts,
            x.as_slice(),
            w,
            bias,
            out.as_mut_slice(),
        );
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        cos: &CpuTensor,
        sin: &CpuTensor,
        shape: RopeShape,
        pos0: usize,
    ) {
        let (isa, c) = (self.isa(), x.cols);
        let (cos, sin) = (cos.as_slice(), sin.as_slice());
        self.rows_mut(x.as_mut_slice(), c, |r0, part| {
            ops::rope(isa, part, cos, sin, shape, pos0 + r0)
        });
    }

    fn store_kv(&self, src: &CpuTensor, cache: &mut CpuTensor, pos0: usize) {
        assert_eq!(src.cols, cache.cols);
        let end = pos0 + src.rows;
        assert!(
            end <= cache.capacity(),
            "KV cache overflow: {end} > {}",
            cache.capacity()
        );
        // Rows past the new end belong to an abandoned continuation.
        cache.rows = end;
        let c = src.cols;
        if cache.is_f16 {
            cache.half[pos0 * c..end * c].convert_from_f32_slice(src.as_slice());
        } else {
            cache.data[pos0 * c..end * c].copy_from_slice(src.as_slice());
        }
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        shape: AttentionShape,
        pos0: usize,
        out: &mut CpuTensor,
    ) {
        self.set_rows(out, q.rows);
        let n_keys = k.rows;
        assert_eq!(k.is_f16, v.is_f16, "K and V caches in one format");
        let halves = k.is_f16.then(|| {
            let len = n_keys * k.cols;
            (&k.half[..len], &v.half[..len])
        });
        let (k, v) = if halves.is_some() {
            (&[][..], &[][..])
        } else {
            (k.as_slice(), v.as_slice())
        };
        let q_data = q.as_slice();
        let isa = self.isa();
        let tiles = q.rows.div_ceil(ops::ATTN_TILE);
        let items = shape.n_heads * tiles;
        let out_ptr = ops::RowsPtr {
            ptr: out.as_mut_slice().as_mut_ptr(),
            ld: shape.n_heads * shape.head_dim,
        };
        let q_rows = q.rows;
        // One item per (head, tile of query rows); each writes its own slices of `out`.
        self.inner.pool.run(|ctx| {
            let items_counter = ctx.items();
            // (An f16 cache's key rows are widened into the last head_dim values.)
            let extra = if halves.is_some() { shape.head_dim } else { 0 };
            let scores = ctx.scratch.f32s(ops::ATTN_TILE * n_keys.max(1) + extra);
            loop {
                let i = items_counter.next();
                if i >= items {
                    break;
                }
                let (h, tile) = (i % shape.n_heads, i / shape.n_heads);
                let t0 = tile * ops::ATTN_TILE;
                let nt = ops::ATTN_TILE.min(q_rows - t0);
                if let Some((kh, vh)) = halves {
                    let ready =
                        fast_scores(isa, q_data, kh, shape, pos0, h, t0, nt, n_keys, scores);
                    ops::attention_tile_f16(
                        isa, q_data, kh, vh, shape, pos0, h, t0, nt, scores, ready, out_ptr,
                    );
                    continue;
                }
                let ready = fast_scores(isa, q_data, k, shape, pos0, h, t0, nt, n_keys, scores);
                ops::attention_tile(
                    isa, q_data, k, v, shape, pos0, h, t0, nt, scores, ready, out_ptr,
                );
            }
        });
    }

    fn activate(&self, x: &mut CpuTensor, act: Activation) {
        let isa = self.isa();
        let c = x.cols;
        self.rows_mut(x.as_mut_slice(), c, |_, part| ops::activate(isa, part, act));
    }

    fn gated(&self, gate: &CpuTensor, up: &CpuTensor, act: Activation, out: &mut CpuTensor) {
        self.set_rows(out, gate.rows);
        let (isa, c) = (self.isa(), gate.cols);
        let (g, u) = (gate.as_slice(), up.as_slice());
        self.rows_mut(out.as_mut_slice(), c, |r0, o| {
            let range = r0 * c..r0 * c + o.len();
            ops::gated(isa, &g[range.clone()], &u[range], act, o)
        });
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) {
        assert_eq!((x.rows, x.cols), (y.rows, y.cols));
        let (isa, c, ys) = (self.isa(), x.cols, y.as_slice());
        self.rows_mut(x.as_mut_slice(), c, |r0, part| {
            ops::add(isa, part, &ys[r0 * c..r0 * c + part.len()])
        });
    }

    fn mul_channels(&self, x: &mut CpuTensor, scale: &CpuTensor) {
        assert_eq!(x.cols, scale.cols);
        scalar::mul_channels(x.as_mut_slice(), &scale.as_slice()[..scale.cols]);
    }

    fn mean_rows(&self, x: &CpuTensor, out: &mut CpuTensor) {
        assert_eq!(x.cols, out.cols);
        self.set_rows(out, 1);
        scalar::mean_rows(x.as_slice(), x.cols, out.as_mut_slice());
    }

    fn depthwise_conv3x3(
        &self,
        x: &CpuTensor,
        grid: Grid,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        stride: usize,
        out: &mut CpuTensor,
    ) {
        assert_eq!(x.rows, grid.cells());
        let rows = scalar::conv3x3_out(grid.h, stride) * scalar::conv3x3_out(grid.w, stride);
        self.set_rows(out, rows);
        let bias = bias.map(|b| self.f32_slice(b));
        scalar::depthwise_conv3x3(
            x.as_slice(),
            grid,
            self.f32_slice(weight),
            bias,
            stride,
            out.as_mut_slice(),
        );
    }

    fn adaptive_avg_pool(&self, x: &CpuTensor, grid: Grid, out_grid: Grid, out: &mut CpuTensor) {
        assert_eq!(x.rows, grid.cells());
        self.set_rows(out, out_grid.cells());
        scalar::adaptive_avg_pool(x.as_slice(), x.cols, grid, out_grid, out.as_mut_slice());
    }

    fn softmax(&self, x: &mut CpuTensor) {
        let cols = x.cols.max(1);
        self.rows_mut(x.as_mut_slice(), cols, |_, rows| {
            rows.chunks_mut(cols).for_each(scalar::softmax)
        });
    }

    fn argmax(&self, x: &CpuTensor) -> Vec<u32> {
        x.as_slice()
            .chunks_exact(x.cols.max(1))
            .map(scalar::argmax)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::RopeStyle;

    /// Small deterministic pseudo-random numbers for kernel tests.
    pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(got: &[f32], expected: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(expected).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what} [{i}]: {a} vs {b}"
            );
        }
    }

    fn upload(be: &CpuBackend, rows: usize, cols: usize, data: &[f32]) -> CpuTensor {
        let mut t = be.tensor(rows, cols);
        be.write(&mut t, data);
        t
    }

    #[test]
    fn attention_matches_scalar_on_ragged_shapes() {
        for isa in Isa::available() {
            for threads in [1, 3] {
                let be = CpuBackend::with_isa(Some(threads), isa).unwrap();
                for &(rows, pos0, heads, kv, hd, causal) in &[
                    (1, 0, 4, 2, 8, true),
                    (5, 3, 6, 3, 5, true),
                    (7, 0, 2, 1, 13, true),
                    (1, 40, 9, 3, 64, true),
                    (9, 0, 3, 3, 300, false),
                    (6, 2, 2, 2, 16, false),
                    // Score blocks of 4 keys and a tail, tiles of 4 and 3 query rows,
                    // value sums in 64-wide chunks and a 16-wide tail.
                    (7, 30, 4, 2, 128, false),
                    (11, 5, 4, 2, 80, true),
                ] {
                    let shape = AttentionShape {
                        n_heads: heads,
                        n_kv_heads: kv,
                        head_dim: hd,
                        scale: 0.3,
                        causal,
                        window: if causal && rows > 4 { Some(3) } else { None },
                    };
                    let ctx = pos0 + rows;
                    let q = rand_vec(rows * heads * hd, 1);
                    let k = rand_vec(ctx * kv * hd, 2);
                    let v = rand_vec(ctx * kv * hd, 3);
                    let mut expected = vec![0.0; rows * heads * hd];
                    scalar::attention(&q, &k, &v, shape, pos0, &mut expected);

                    let qt = upload(&be, rows, heads * hd, &q);
                    let kt = upload(&be, ctx, kv * hd, &k);
                    let vt = upload(&be, ctx, kv * hd, &v);
                    let mut out = be.tensor(rows, heads * hd);
                    be.attention(&qt, &kt, &vt, shape, pos0, &mut out);
                    close(
                        &be.read(&out),
                        &expected,
                        1e-5,
                        &format!("{isa:?} attention"),
                    );

                    // An f16 KV cache: the same attention of the values rounded to f16.
                    let prec = matmul::ActPrecision::from_env();
                    let be16 = CpuBackend::with_options(Some(threads), isa, prec, KvPrecision::F16)
                        .unwrap();
                    let round = |x: &[f32]| -> Vec<f32> {
                        x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
                    };
                    let (k16, v16) = (round(&k), round(&v));
                    scalar::attention(&q, &k16, &v16, shape, pos0, &mut expected);
                    let (mut kc, mut vc) = (be16.kv_tensor(kv * hd), be16.kv_tensor(kv * hd));
                    be16.reserve_rows(&mut kc, ctx);
                    be16.reserve_rows(&mut vc, ctx);
                    // Stored in two steps, as prefill and decode do.
                    be16.store_kv(
                        &upload(&be16, ctx - 1, kv * hd, &k[..(ctx - 1) * kv * hd]),
                        &mut kc,
                        0,
                    );
                    be16.store_kv(
                        &upload(&be16, 1, kv * hd, &k[(ctx - 1) * kv * hd..]),
                        &mut kc,
                        ctx - 1,
                    );
                    be16.store_kv(&upload(&be16, ctx, kv * hd, &v), &mut vc, 0);
                    assert_eq!(be16.read(&kc), k16);
                    assert_eq!(be16.tensor_bytes(&kc), ctx * kv * hd * 2);
                    be16.attention(&qt, &kc, &vc, shape, pos0, &mut out);
                    close(
                        &be16.read(&out),
                        &expected,
                        1e-5,
                        &format!("{isa:?} attention over an f16 cache"),
                    );
                }
            }
        }
    }

    #[test]
    fn row_ops_match_scalar_on_ragged_shapes() {
        for isa in Isa::available() {
            let be = CpuBackend::with_isa(Some(2), isa).unwrap();
            for &(rows, cols) in &[(1, 1), (1, 17), (3, 576), (70, 1000)] {
                let what = format!("{isa:?} {rows}x{cols}");
                let x = rand_vec(rows * cols, 5);
                let y = rand_vec(rows * cols, 6);
                let w = rand_vec(cols, 7);
                let b = rand_vec(cols, 8);
                let xt = upload(&be, rows, cols, &x);
                let yt = upload(&be, rows, cols, &y);
                let wt = be.weight(HostTensor::from_f32(vec![cols], &w)).unwrap();
                let bt = be.weight(HostTensor::from_f32(vec![cols], &b)).unwrap();

                let mut expected = vec![0.0; rows * cols];
                scalar::rms_norm(&x, &w, 1e-5, &mut expected);
                let mut out = be.tensor(rows, cols);
                be.rms_norm(&xt, &wt, 1e-5, &mut out);
                close(&be.read(&out), &expected, 1e-5, &format!("{what} rms_norm"));

                scalar::layer_norm(&x, &w, &b, 1e-5, &mut expected);
                be.layer_norm(&xt, &wt, &bt, 1e-5, &mut out);
                close(
                    &be.read(&out),
                    &expected,
                    1e-5,
                    &format!("{what} layer_norm"),
                );

                for act in [
                    Activation::Silu,
                    Activation::Gelu,
                    Activation::GeluTanh,
                    Activation::QuickGelu,
                ] {
                    scalar::gated(&x, &y, act, &mut expected);
                    be.gated(&xt, &yt, act, &mut out);
                    close(
                        &be.read(&out),
                        &expected,
                        1e-5,
                        &format!("{what} gated {act:?}"),
                    );
                    let mut e2 = x.clone();
                    scalar::activate(&mut e2, act);
                    let mut t = upload(&be, rows, cols, &x);
                    be.activate(&mut t, act);
                    close(&be.read(&t), &e2, 1e-5, &format!("{what} activate {act:?}"));
                }

                let mut e2 = x.clone();
                scalar::add(&mut e2, &y);
                let mut t = upload(&be, rows, cols, &x);
                be.add(&mut t, &yt);
                close(&be.read(&t), &e2, 0.0, &format!("{what} add"));
            }
            // RoPE, both layouts, partial rotary.
            for style in [RopeStyle::NeoX, RopeStyle::Interleaved] {
                let (rows, heads, hd, rot, pos0) = (40, 3, 10, 6, 5);
                let shape = RopeShape {
                    n_heads: heads,
                    head_dim: hd,
                    rotary_dim: rot,
                    style,
                };
                let cos = rand_vec((pos0 + rows) * rot / 2, 9);
                let sin = rand_vec((pos0 + rows) * rot / 2, 10);
                let x = rand_vec(rows * heads * hd, 11);
                let mut expected = x.clone();
                scalar::rope(&mut expected, &cos, &sin, shape, pos0);
                let mut t = upload(&be, rows, heads * hd, &x);
                let ct = upload(&be, pos0 + rows, rot / 2, &cos);
                let st = upload(&be, pos0 + rows, rot / 2, &sin);
                be.rope(&mut t, &ct, &st, shape, pos0);
                close(
                    &be.read(&t),
                    &expected,
                    1e-6,
                    &format!("{isa:?} rope {style:?}"),
                );
            }
        }
    }

    #[test]
    fn rope_styles_rotate_the_documented_pairs() {
        // One head of 4 dims at position 1 with a single frequency per pair of angle 90°.
        let shape = |style| RopeShape {
            n_heads: 1,
            head_dim: 4,
            rotary_dim: 4,
            style,
        };
        let cos = [1.0, 1.0, 0.0, 0.0];
        let sin = [0.0, 0.0, 1.0, 1.0];
        let mut x = [1.0, 2.0, 3.0, 4.0];
        scalar::rope(&mut x, &cos, &sin, shape(RopeStyle::NeoX), 1);
        assert_eq!(x, [-3.0, -4.0, 1.0, 2.0]);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        scalar::rope(&mut x, &cos, &sin, shape(RopeStyle::Interleaved), 1);
        assert_eq!(x, [-2.0, 1.0, -4.0, 3.0]);
    }
}
