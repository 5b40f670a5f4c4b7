//! `out = x · wᵀ + bias` for weights in their stored format, on the thread pool.
//!
//! - Quantised weights (Q4_0, Q4_1, Q8_0), few activation rows (decode): the rows are
//!   quantised once per call (by the calling thread) to int8 per 32-block as ggml does
//!   (default) or int16 (`POCKETVLM_ACT=int16`: within float rounding of f32 activations;
//!   see [`ActPrecision`]), and the SIMD integer kernels dot them with the weight blocks
//!   as stored — every weight byte is read once per call. For one row (decode) the x86 kernels reduce 16 (8) blocks'
//!   integer dots together before scaling them (see `simd::x86`); on AVX-512 the row is
//!   also handed over in pair order (`simd::pair_blocks16`), or, for Q4 weights with
//!   AVX-512 VBMI, split into high and low bytes (`simd::split_blocks16`; int8 rows go to
//!   the same kernel in its byte order, `simd::split_blocks8`).
//! - Quantised weights, from [`DEQUANT_MIN_ROWS`] rows on (prefill, vision): compute-bound,
//!   so each task dequantises its panel of weight rows to f32 once (SIMD) and runs the float
//!   tiles below over every activation row — fewer instructions per multiply than per-block
//!   integer dots with their scale handling, and exact.
//! - Q4_0/Q4_1 weights with int8 activations (`POCKETVLM_ACT=int8`, ggml's numerics) from
//!   [`DEQUANT_MIN_ROWS`] rows on, on AVX-512 VNNI: each task repacks its 32 weight rows
//!   into 16-row groups whose lanes are output columns (`simd::vnni`), so one `vpdpbusd`
//!   does 64 useful multiplies and nothing is reduced across lanes.
//! - Float weights (F32, F16, BF16): each task converts its panel of weight rows to f32
//!   once (in its scratch arena; F32 rows are used in place) and multiplies it with every
//!   activation row in register tiles.
//!
//! Work items are panels of consecutive output features, claimed in shares
//! ([`Ctx::next_of`]): each core walks its own contiguous share of the rows in order, one
//! long stream the hardware prefetcher follows, then helps with what is left of the
//! others' (balanced when a core is busy elsewhere). A decode step's panels are ~32 KiB of
//! weights; a prefill's are 16–32 rows so the panel stays in L1/L2 while every activation
//! row passes over it.

use std::sync::Mutex;

use super::pool::{Ctx, ThreadPool};
use super::simd::{self, Isa, OutPtr, Q8Acts, TILE_R};
use crate::quant::QK;
use crate::tensor::{DType, HostTensor, convert_to_f32};

/// Reused buffers for quantised activations.
#[derive(Default)]
pub struct ActBuf {
    qs: Vec<i8>,
    qs16: Vec<i16>,
    /// One int16 row again in the decode kernel's pair order (see `simd::pair_blocks16`).
    qs16p: Vec<i16>,
    /// One row in the Q4 decode kernel's byte order: int16 split into bytes
    /// (`simd::split_blocks16`) or int8 (`simd::split_blocks8`).
    split: Vec<u8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// Activation rows in bf16 (prefill of quantised weights).
    bf: Vec<u16>,
    /// Per-block integer start values of the int8 prefill GEMM (`simd::i8_gemm_offsets`).
    init: Vec<i32>,
    /// The integer kernels' work items, (projection, first row) (see [`integer_rows`]).
    items: Vec<(usize, usize)>,
}

/// Activation rows from which quantised weights are dequantised to f32 panels.
pub const DEQUANT_MIN_ROWS: usize = 8;

/// Weight rows per work item of the int8 prefill GEMM (two of its 16-row groups).
const I8_PANEL_ROWS: usize = 32;

/// Weights per work item of a decode step (one or two activation rows): ~1 µs of one
/// core's stream. Items are claimed in shares ([`Ctx::next_of`]), so a core's items follow
/// each other in memory and their size only sets how finely the last ones are shared out.
const STREAM_ITEM_BYTES: usize = 32 << 10;

/// Output features per work item, for weight rows of `row_bytes`.
fn panel_rows(t_rows: usize, row_bytes: usize, quantised: bool) -> usize {
    let rows = if t_rows <= 2 {
        STREAM_ITEM_BYTES / row_bytes.max(1)
    } else if quantised {
        16
    } else {
        32
    };
    rows.max(1).div_ceil(TILE_R) * TILE_R
}

/// Runs `f(ctx, n0, n1)` on the pool for every panel `n0..n1` of `panel` output features,
/// each claimed once, in shares ([`Ctx::next_of`]).
fn for_panels(
    pool: &ThreadPool,
    n_out: usize,
    panel: usize,
    f: impl Fn(&mut Ctx, usize, usize) + Sync,
) {
    let items = n_out.div_ceil(panel);
    pool.run(|ctx| {
        while let Some(i) = ctx.next_of(items) {
            let n0 = i * panel;
            f(ctx, n0, (n0 + panel).min(n_out));
        }
    });
}

/// Whether this weight takes the integer path.
pub fn uses_int8(w: &HostTensor) -> bool {
    let (_, k) = w.rows_cols();
    w.dtype.is_quantized() && k.is_multiple_of(QK)
}

/// How activations are quantised for the integer kernels, and how prefill multiplies.
///
/// | mode | decode (fewer than [`DEQUANT_MIN_ROWS`] rows) | prefill of quantised weights |
/// |---|---|---|
/// | `Mixed` (default) | int8 per 32-block | bf16 (f32 without a bf16 dot product) |
/// | `Int8` (ggml's numerics) | int8 per 32-block | int8 (VNNI GEMM where there is one) |
/// | `Int16` (accurate) | int16 per 32-block | f32, exact |
/// | `F32` (reference) | f32 | f32, exact |
///
/// Decode streams every weight byte once per token, so its integer dots are as cheap as the
/// activations are narrow: int8 reads half the activation bytes of int16 and, for Q4
/// weights, multiplies each weight byte once instead of twice. Prefill is where a model's
/// answers are decided for the whole reply, and int8 there flips SmolLM2's greedy answers;
/// int8 only in decode keeps them (see `Mixed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActPrecision {
    /// The default: int8 activations for decode as ggml quantises them (Q8_0/Q8_1 blocks),
    /// prefill in bf16 (weights and activations rounded to bf16, f32 accumulation) on CPUs
    /// with a bf16 dot product (AVX-512 BF16), twice the multiplies per instruction of f32 —
    /// elsewhere exact f32. Measured on SmolLM2-135M Q4_1 against transformers: greedy
    /// continuations identical for 12/32/21 tokens on the test prompts (12/16/16 needed;
    /// `Int16`: 12/32/32), and bf16 prefill 99% teacher-forced top-1 agreement with f32
    /// weights (int8 prefill: 96%).
    Mixed,
    /// int8 per 32-block, as ggml (Q8_0/Q8_1), for decode and prefill alike: the fastest
    /// integer dot products, but int8 prefill is not accurate enough to keep every real
    /// model's answers.
    Int8,
    /// int16 per 32-block (~256× finer, within float rounding of f32 activations) for
    /// decode; prefill dequantises weight panels to f32 (exact).
    Int16,
    /// f32 activations against weight rows dequantised to f32 (the slow reference).
    F32,
}

impl ActPrecision {
    /// The default ([`ActPrecision::Mixed`]), or `POCKETVLM_ACT=mixed|int8|int16|f32`.
    pub fn from_env() -> Self {
        match std::env::var("POCKETVLM_ACT").as_deref() {
            Ok("int8") => ActPrecision::Int8,
            Ok("int16") => ActPrecision::Int16,
            Ok("f32") => ActPrecision::F32,
            _ => ActPrecision::Mixed,
        }
    }

    /// Whether the integer kernels take int8 activation rows (else int16).
    fn int8_rows(self) -> bool {
        matches!(self, ActPrecision::Mixed | ActPrecision::Int8)
    }
}

/// One projection of [`matmul_many`]: a weight, its bias and its output. `matmul_many`
/// takes them in `Option` slots (a fixed array on the caller's stack); `None` slots are
/// skipped.
pub struct Proj<'a> {
    pub w: &'a HostTensor,
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

/// Whether `matmul` runs `w` against `t_rows` activation rows through the integer kernels.
fn takes_integer_path(prec: ActPrecision, t_rows: usize, w: &HostTensor) -> bool {
    let integer = match prec {
        ActPrecision::Int8 => true,
        ActPrecision::Int16 | ActPrecision::Mixed => t_rows < DEQUANT_MIN_ROWS,
        ActPrecision::F32 => false,
    };
    uses_int8(w) && integer
}

/// Several [`matmul`]s of one activation `x`: a layer's q, k and v projections, or its gate
/// and up. Where every weight takes the integer kernels without the int8 prefill GEMM (decode),
/// `x` is quantised once and all the weights' rows are one pool job, so the cores meet once
/// at its end instead of once per weight; otherwise one `matmul` per projection.
pub fn matmul_many(
    pool: &ThreadPool,
    isa: Isa,
    prec: ActPrecision,
    acts: &Mutex<ActBuf>,
    x: &[f32],
    projs: &mut [Option<Proj>],
) {
    let Some(k) = projs.iter().flatten().next().map(|p| p.w.rows_cols().1) else {
        return;
    };
    let t_rows = x.len().checked_div(k).unwrap_or(0);
    let fused = t_rows > 0
        && t_rows < DEQUANT_MIN_ROWS
        && projs.len() <= MAX_FUSED
        && projs.iter().flatten().all(|p| {
            let (n_out, pk) = p.w.rows_cols();
            pk == k && n_out > 0 && takes_integer_path(prec, t_rows, p.w)
        });
    if !fused {
        for p in projs.iter_mut().flatten() {
            matmul(pool, isa, prec, acts, x, p.w, p.bias, p.out);
        }
        return;
    }
    for p in projs.iter().flatten() {
        assert_eq!(
            p.out.len(),
            t_rows * p.w.rows_cols().0,
            "matmul output size"
        );
    }
    let mut guard = acts.lock().unwrap_or_else(|e| e.into_inner());
    integer_rows(pool, isa, prec, &mut guard, x, projs);
}

/// Quantises the activation rows `x` (width `k`) into `buf`: int16 per block if `wide`,
/// else int8, with their scales and sums.
fn quantize_acts(isa: Isa, buf: &mut ActBuf, x: &[f32], k: usize, wide: bool) {
    let (t_rows, nb) = (x.len() / k, k / QK);
    buf.d.resize(t_rows * nb, 0.0);
    buf.s.resize(t_rows * nb, 0.0);
    let (d, s) = (&mut buf.d[..t_rows * nb], &mut buf.s[..t_rows * nb]);
    if wide {
        buf.qs16.resize(t_rows * k, 0);
        simd::quantize_rows16(isa, x, &mut buf.qs16[..t_rows * k], d, s);
    } else {
        buf.qs.resize(t_rows * k, 0);
        simd::quantize_rows(isa, x, &mut buf.qs[..t_rows * k], d, s);
    }
}

/// Most projections [`matmul_many`] runs as one job (q, k and v: three).
pub const MAX_FUSED: usize = 4;

/// What a worker of [`integer_rows`] needs of one projection.
#[derive(Clone, Copy)]
struct RowsOf<'a> {
    bytes: &'a [u8],
    row_bytes: usize,
    n_out: usize,
    dtype: DType,
    out: OutPtr,
    bias: Option<&'a [f32]>,
}

/// The integer kernels (int16 or int8 activations) over every row of `projs`, which share
/// the activation rows `x` and their width: `x` is quantised once and the rows of all
/// projections are split into panels, claimed in shares by the pool's workers as one job.
fn integer_rows<'a>(
    pool: &ThreadPool,
    isa: Isa,
    prec: ActPrecision,
    buf: &mut ActBuf,
    x: &[f32],
    projs: &mut [Option<Proj<'a>>],
) {
    assert!(projs.len() <= MAX_FUSED);
    let Some(k) = projs.iter().flatten().next().map(|p| p.w.rows_cols().1) else {
        return;
    };
    let (t_rows, nb) = (x.len() / k, k / QK);
    let wide = !prec.int8_rows();
    quantize_acts(isa, buf, x, k, wide);
    let one = wide && t_rows == 1;
    let split = t_rows == 1
        && projs
            .iter()
            .flatten()
            .any(|p| simd::wants_split(isa, p.w.dtype));
    let pairs = one
        && simd::wants_pairs16(isa)
        && projs
            .iter()
            .flatten()
            .any(|p| !simd::wants_split(isa, p.w.dtype));
    if split && wide {
        buf.split.resize(simd::split16_len(nb), 0);
        simd::split_blocks16(&buf.qs16[..k], &mut buf.split);
    } else if split {
        buf.split.resize(simd::split8_len(nb), 0);
        simd::split_blocks8(&buf.qs[..k], &mut buf.split);
    }
    if pairs {
        buf.qs16p.resize(nb / 2 * 2 * QK, 0);
        simd::pair_blocks16(&buf.qs16[..k], &mut buf.qs16p);
    }
    let mut parts = [None; MAX_FUSED];
    for (part, p) in parts.iter_mut().zip(projs.iter_mut().flatten()) {
        let w: &'a HostTensor = p.w;
        let n_out = w.rows_cols().0;
        *part = Some(RowsOf {
            bytes: w.bytes(),
            row_bytes: w.row_bytes(),
            n_out,
            dtype: w.dtype,
            out: OutPtr {
                ptr: p.out.as_mut_ptr(),
                ld: n_out,
            },
            bias: p.bias,
        });
    }
    // Work items: (projection, first row), each up to the next item's first row or the
    // projection's end; claimed in shares, so each core streams its consecutive rows.
    buf.items.clear();
    for (j, part) in parts.iter().flatten().enumerate() {
        let panel = panel_rows(t_rows, part.row_bytes, true);
        buf.items
            .extend((0..part.n_out).step_by(panel).map(|n0| (j, n0)));
    }
    let items = &buf.items[..];
    let (qs, qs16, d, s) = (&buf.qs[..], &buf.qs16[..], &buf.d[..], &buf.s[..]);
    let paired: &[i16] = if pairs { &buf.qs16p } else { &[] };
    let split: &[u8] = if split { &buf.split } else { &[] };
    pool.run(|ctx| {
        while let Some(i) = ctx.next_of(items.len()) {
            let (j, n0) = items[i];
            let Some(part) = parts[j] else {
                break;
            };
            let n1 = match items.get(i + 1) {
                Some(&(next, n1)) if next == j => n1,
                _ => part.n_out,
            };
            let wr = &part.bytes[n0 * part.row_bytes..n1 * part.row_bytes];
            // SAFETY: rows n0..n1 are inside the weight; output columns n0..n1 are this
            // item's.
            unsafe {
                if wide {
                    let a = simd::Q16Acts {
                        qs: &qs16[..t_rows * k],
                        d: &d[..t_rows * nb],
                        s: &s[..t_rows * nb],
                        nb,
                        paired,
                        split,
                    };
                    simd::qgemm16(
                        isa,
                        part.dtype,
                        wr,
                        part.row_bytes,
                        n1 - n0,
                        a,
                        part.out,
                        n0,
                    );
                } else {
                    let a = Q8Acts {
                        qs: &qs[..t_rows * k],
                        d: &d[..t_rows * nb],
                        s: &s[..t_rows * nb],
                        nb,
                        split,
                    };
                    simd::qgemm(
                        isa,
                        part.dtype,
                        wr,
                        part.row_bytes,
                        n1 - n0,
                        a,
                        part.out,
                        n0,
                    );
                }
                if let Some(b) = part.bias {
                    for t in 0..t_rows {
                        for (n, &bn) in b.iter().enumerate().take(n1).skip(n0) {
                            part.out.add(t, n, bn);
                        }
                    }
                }
            }
        }
    });
}

/// `out[t][n] = Σ_k x[t][k] · w[n][k] + bias[n]` (see the module docs).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    isa: Isa,
    prec: ActPrecision,
    acts: &Mutex<ActBuf>,
    x: &[f32],
    w: &HostTensor,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n_out, k) = w.rows_cols();
    let t_rows = x.len().checked_div(k).unwrap_or(0);
    assert_eq!(out.len(), t_rows * n_out, "matmul output size");
    if t_rows == 0 || n_out == 0 {
        return;
    }
    let outp = OutPtr {
        ptr: out.as_mut_ptr(),
        ld: n_out,
    };
    let bytes = w.bytes();
    let row_bytes = w.row_bytes();
    let add_bias = |n0: usize, n1: usize| {
        if let Some(b) = bias {
            for t in 0..t_rows {
                for (n, &bn) in b.iter().enumerate().take(n1).skip(n0) {
                    // SAFETY: the columns n0..n1 belong to the calling work item.
                    unsafe { outp.add(t, n, bn) };
                }
            }
        }
    };

    // Prefill (many activation rows) is compute-bound: a panel of weight rows dequantised to
    // f32 once, then f32 FMA tiles, beats per-block integer dots (whose per-block scale
    // handling costs as much as the multiply) and is exact. Decode streams the stored
    // blocks through the integer kernels.
    if takes_integer_path(prec, t_rows, w) {
        let mut guard = acts.lock().unwrap_or_else(|e| e.into_inner());
        let buf = &mut *guard;
        let nb = k / QK;
        if prec == ActPrecision::Int8
            && t_rows >= DEQUANT_MIN_ROWS
            && simd::has_i8_gemm(isa, w.dtype)
        {
            // Prefill with int8 activations: each task repacks its panel of weight rows
            // once for the VNNI GEMM (see `simd::vnni`) and runs every activation row.
            quantize_acts(isa, buf, x, k, false);
            let a = Q8Acts {
                qs: &buf.qs[..t_rows * k],
                d: &buf.d[..t_rows * nb],
                s: &buf.s[..t_rows * nb],
                nb,
                split: &[],
            };
            let dtype = w.dtype;
            simd::i8_gemm_offsets(isa, dtype, a.qs, &mut buf.init);
            let init = &buf.init[..];
            for_panels(pool, n_out, I8_PANEL_ROWS, |ctx, n0, n1| {
                let len = simd::i8_packed_len(isa, n1 - n0, nb);
                let scratch = ctx.scratch.f32s(len.div_ceil(4));
                let packed: &mut [u8] = &mut bytemuck::cast_slice_mut(scratch)[..len];
                let raw = &bytes[n0 * row_bytes..n1 * row_bytes];
                simd::pack_i8_gemm(isa, dtype, raw, row_bytes, n1 - n0, nb, packed);
                // SAFETY: output columns n0..n1 are this item's.
                unsafe { simd::i8_gemm(isa, dtype, packed, n1 - n0, a, init, outp, n0) };
                add_bias(n0, n1);
            });
            return;
        }
        integer_rows(pool, isa, prec, buf, x, &mut [Some(Proj { w, bias, out })]);
        return;
    }

    if uses_int8(w) && prec == ActPrecision::Mixed && simd::has_bf16_gemm(isa) {
        // Prefill on a CPU with a bf16 dot product: activations converted and packed once,
        // each panel of weight rows dequantised and packed once (see `simd::bf16_gemm`).
        let mut guard = acts.lock().unwrap_or_else(|e| e.into_inner());
        let buf = &mut *guard;
        buf.bf.resize(simd::bf16_acts_len(t_rows, k), 0);
        simd::pack_bf16_acts(isa, x, k, &mut buf.bf);
        let xb = &buf.bf[..];
        // 32 weight rows (bf16: 32 × k × 2 bytes, in L2) per pass over the activations.
        let panel = panel_rows(t_rows, row_bytes, false);
        let dtype = w.dtype;
        for_panels(pool, n_out, panel, |ctx, n0, n1| {
            let raw = &bytes[n0 * row_bytes..n1 * row_bytes];
            let (len, tmp) = (
                simd::bf16_packed_len(n1 - n0, k),
                simd::bf16_pack_scratch(k),
            );
            let scratch = ctx.scratch.f32s((len + tmp).div_ceil(2));
            let (wb, tb) = bytemuck::cast_slice_mut::<f32, u16>(scratch).split_at_mut(len);
            simd::pack_bf16(isa, dtype, raw, row_bytes, n1 - n0, k, wb, tb);
            unsafe { simd::bf16_gemm(isa, wb, n1 - n0, xb, t_rows, k, outp, n0) };
            add_bias(n0, n1);
        });
        return;
    }

    let panel = panel_rows(t_rows, row_bytes, false);
    let dtype = w.dtype;
    for_panels(pool, n_out, panel, |ctx, n0, n1| {
        let raw = &bytes[n0 * row_bytes..n1 * row_bytes];
        // SAFETY: output columns n0..n1 are this item's.
        if !dtype.is_quantized()
            && unsafe { simd::fgemm_native(isa, dtype, raw, n1 - n0, x, k, outp, n0) }
        {
            add_bias(n0, n1);
            return;
        }
        let extra = simd::panel_scratch(isa, n1 - n0);
        let panel_len = if dtype == DType::F32 {
            0
        } else {
            (n1 - n0) * k
        };
        let buf = ctx.scratch.f32s(panel_len + extra);
        let (panel, acc) = buf.split_at_mut(panel_len);
        let rows: &[f32] = if dtype == DType::F32 {
            bytemuck::cast_slice(raw)
        } else {
            if dtype.is_quantized() {
                for (r, o) in panel.chunks_exact_mut(k).enumerate() {
                    simd::dequantize(isa, dtype, &raw[r * row_bytes..(r + 1) * row_bytes], o);
                }
            } else {
                convert_to_f32(dtype, raw, panel);
            }
            panel
        };
        // SAFETY: output columns n0..n1 are this item's.
        unsafe {
            if t_rows >= DEQUANT_MIN_ROWS {
                simd::fgemm_panel(isa, rows, n1 - n0, x, k, outp, n0, acc);
            } else {
                simd::fgemm(isa, rows, n1 - n0, x, k, outp, n0);
            }
        }
        add_bias(n0, n1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::scalar;
    use crate::tensor::Storage;
    use half::{bf16, f16};

    pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    pub(crate) fn weight(dtype: DType, n: usize, k: usize, seed: u64) -> HostTensor {
        let v = rand_vec(n * k, seed);
        let bytes: Vec<u8> = match dtype {
            DType::F32 => bytemuck::cast_slice(&v).to_vec(),
            DType::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            DType::BF16 => v
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            q => crate::quant::quantize(q, &v),
        };
        HostTensor::new(dtype, vec![n, k], Storage::from_bytes(&bytes))
    }

    fn round_bf16(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    }

    /// The activations as the integer path sees them (quantised, then dequantised).
    fn requantised(x: &[f32], k: usize, prec: ActPrecision) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
            for (xb, ob) in xr.chunks_exact(QK).zip(or.chunks_exact_mut(QK)) {
                if prec.int8_rows() {
                    let mut q = [0i8; QK];
                    let (d, _) = simd::generic::quantize_block(xb, &mut q);
                    for (o, &v) in ob.iter_mut().zip(&q) {
                        *o = v as f32 * d;
                    }
                } else {
                    let mut q = [0i16; QK];
                    let (d, _) = simd::generic::quantize_block16(xb, &mut q);
                    for (o, &v) in ob.iter_mut().zip(&q) {
                        *o = v as f32 * d;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_flavour_and_thread_count_matches_scalar_on_ragged_shapes() {
        for (isa, prec) in Isa::available().into_iter().flat_map(|i| {
            [
                (i, ActPrecision::Int8),
                (i, ActPrecision::Int16),
                (i, ActPrecision::Mixed),
            ]
        }) {
            for threads in [1, 3] {
                let pool = ThreadPool::new(threads).unwrap();
                let acts = Mutex::new(ActBuf::default());
                for dtype in [
                    DType::F32,
                    DType::F16,
                    DType::BF16,
                    DType::Q4_0,
                    DType::Q4_1,
                    DType::Q8_0,
                ] {
                    let shapes: &[(usize, usize, usize)] = if dtype.is_quantized() {
                        &[
                            (1, 1, 32),
                            (1, 7, 64),
                            (3, 300, 96),
                            (5, 33, 160),
                            (2, 9, 32),
                            (9, 130, 256),
                            (1, 258, 2048),
                            // Decode in groups of 16 blocks: one group and a block, two
                            // groups and three blocks (a pair and one), exactly one group.
                            (1, 19, 544),
                            (1, 5, 1120),
                            (1, 3, 512),
                            // Prefill over several K slices of the bf16 GEMM, ragged rows.
                            (10, 37, 2080),
                            // bf16 register tiles of 12 activation rows and a tail of 6, a
                            // 32-row tile, a ragged one and one of 6 rows; three K slices.
                            (30, 70, 544),
                            (17, 45, 256),
                            // The int8 prefill GEMM: 6-row tiles and a tail of 1, a
                            // 16-row group pair, a lone group and a ragged last group.
                            (13, 45, 96),
                            (8, 16, 32),
                        ]
                    } else {
                        &[
                            (1, 1, 1),
                            (1, 7, 33),
                            (3, 300, 17),
                            (5, 100, 64),
                            (2, 9, 129),
                            (9, 37, 200),
                        ]
                    };
                    for &(t, n, k) in shapes {
                        let w = weight(dtype, n, k, (n * 31 + k) as u64);
                        let x = rand_vec(t * k, 7 + t as u64);
                        let bias = rand_vec(n, 99);
                        // The integer path is exact up to float rounding against the
                        // scalar matmul of the quantised activations; from
                        // DEQUANT_MIN_ROWS rows on, activations stay f32.
                        let integer = prec == ActPrecision::Int8 || t < DEQUANT_MIN_ROWS;
                        // Prefill of quantised weights with a bf16 dot product: exact
                        // against both operands rounded to bf16.
                        let bf = uses_int8(&w)
                            && !integer
                            && prec == ActPrecision::Mixed
                            && simd::has_bf16_gemm(isa);
                        let xr = if uses_int8(&w) && integer {
                            requantised(&x, k, prec)
                        } else if bf {
                            round_bf16(&x)
                        } else {
                            x.clone()
                        };
                        let mut expected = vec![0.0; t * n];
                        if bf {
                            let wr = round_bf16(&w.to_f32_vec());
                            let wf = HostTensor::new(
                                DType::F32,
                                vec![n, k],
                                Storage::from_bytes(bytemuck::cast_slice(&wr)),
                            );
                            scalar::matmul(&xr, &wf, Some(&bias), &mut expected);
                        } else {
                            scalar::matmul(&xr, &w, Some(&bias), &mut expected);
                        }
                        let mut got = vec![0.0; t * n];
                        matmul(&pool, isa, prec, &acts, &x, &w, Some(&bias), &mut got);
                        for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
                            assert!(
                                (a - b).abs() <= 2e-6 * (1.0 + b.abs()) * (k as f32).sqrt() * 4.0,
                                "{isa:?} {prec:?} {threads}t {dtype} {t}x{n}x{k} [{i}]: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// One job over several projections gives each the same bits as its own `matmul`:
    /// mixed formats (split-byte, pair-order and int8 kernels in one job), biases, GQA-sized
    /// outputs, one to three threads, and the fallbacks (float weights, prefill).
    #[test]
    fn matmul_many_equals_one_matmul_each() {
        for isa in Isa::available() {
            for prec in [ActPrecision::Int8, ActPrecision::Int16, ActPrecision::Mixed] {
                for threads in [1, 2, 3] {
                    let pool = ThreadPool::new(threads).unwrap();
                    let acts = Mutex::new(ActBuf::default());
                    let k = 544;
                    for (t, dtypes) in [
                        (1, [DType::Q4_0, DType::Q4_0, DType::Q4_0]),
                        (1, [DType::Q4_0, DType::Q8_0, DType::Q4_1]),
                        (3, [DType::Q8_0, DType::Q4_1, DType::Q4_0]),
                        (1, [DType::Q4_0, DType::F16, DType::Q8_0]),
                        (9, [DType::Q4_0, DType::Q4_0, DType::Q8_0]),
                    ] {
                        let ns = [300, 37, 37];
                        let ws: Vec<HostTensor> = dtypes
                            .iter()
                            .zip(ns)
                            .enumerate()
                            .map(|(j, (&d, n))| weight(d, n, k, 5 + j as u64))
                            .collect();
                        let biases: Vec<Vec<f32>> = ns.iter().map(|&n| rand_vec(n, 3)).collect();
                        let x = rand_vec(t * k, 11 + t as u64);
                        let mut outs: Vec<Vec<f32>> =
                            ns.iter().map(|&n| vec![0.0; t * n]).collect();
                        let mut slots: [Option<Proj>; MAX_FUSED] = Default::default();
                        for (j, (slot, out)) in slots.iter_mut().zip(outs.iter_mut()).enumerate() {
                            *slot = Some(Proj {
                                w: &ws[j],
                                bias: (j != 1).then_some(&biases[j][..]),
                                out,
                            });
                        }
                        matmul_many(&pool, isa, prec, &acts, &x, &mut slots);
                        for (j, w) in ws.iter().enumerate() {
                            let mut one = vec![0.0; t * ns[j]];
                            let bias = (j != 1).then_some(&biases[j][..]);
                            matmul(&pool, isa, prec, &acts, &x, w, bias, &mut one);
                            assert_eq!(
                                outs[j], one,
                                "{isa:?} {prec:?} {threads}t {t} rows, projection {j} ({})",
                                w.dtype
                            );
                        }
                    }
                }
            }
        }
    }

    /// The bf16 prefill of quantised weights stays within bf16 rounding of the exact
    /// product (relative to the output's scale), on shapes of real models.
    #[test]
    fn bf16_prefill_stays_close_to_f32() {
        let isa = Isa::detect();
        if !simd::has_bf16_gemm(isa) {
            eprintln!("no bf16 dot product on this CPU: the f32 prefill path is used");
            return;
        }
        let pool = ThreadPool::new(2).unwrap();
        let acts = Mutex::new(ActBuf::default());
        let (t, n, k) = (37, 96, 2048);
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let w = weight(dtype, n, k, 17);
            let x = rand_vec(t * k, 3);
            let mut exact = vec![0.0; t * n];
            matmul(
                &pool,
                isa,
                ActPrecision::F32,
                &acts,
                &x,
                &w,
                None,
                &mut exact,
            );
            let mut got = vec![0.0; t * n];
            matmul(
                &pool,
                isa,
                ActPrecision::Mixed,
                &acts,
                &x,
                &w,
                None,
                &mut got,
            );
            let (d, scale) = got
                .iter()
                .zip(&exact)
                .fold((0.0f32, 0.0f32), |(d, s), (a, b)| {
                    (d.max((a - b).abs()), s.max(b.abs()))
                });
            eprintln!("{dtype} bf16 prefill: max|Δ| {d:.2e} of {scale:.2}");
            assert!(d <= 4e-3 * scale, "{dtype}: {d} vs {scale}");
        }
    }

    #[test]
    fn integer_paths_stay_close_to_f32_activations() {
        let pool = ThreadPool::new(2).unwrap();
        let acts = Mutex::new(ActBuf::default());
        let (t, n, k) = (3, 64, 1024);
        for (dtype, prec, tol) in [DType::Q4_0, DType::Q4_1, DType::Q8_0]
            .into_iter()
            .flat_map(|d| {
                [
                    (d, ActPrecision::Int8, 0.02),
                    (d, ActPrecision::Mixed, 0.02),
                    (d, ActPrecision::Int16, 1e-4),
                ]
            })
        {
            let w = weight(dtype, n, k, 5);
            let x = rand_vec(t * k, 11);
            let mut exact = vec![0.0; t * n];
            scalar::matmul(&x, &w, None, &mut exact);
            let mut got = vec![0.0; t * n];
            matmul(&pool, Isa::detect(), prec, &acts, &x, &w, None, &mut got);
            let scale = exact.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            for (a, b) in got.iter().zip(&exact) {
                assert!((a - b).abs() <= tol * scale, "{dtype} {prec:?}: {a} vs {b}");
            }
        }
    }
}
