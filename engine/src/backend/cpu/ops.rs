//! Element-wise and attention kernels, written once in plain Rust and compiled for each
//! instruction set ("multiversioning"): the generic bodies are `#[inline(always)]` and
//! vectorisable (independent lanes, no libm calls), and [`multiversion!`] instantiates
//! them under `#[target_feature]` wrappers selected by the backend's [`Isa`]. Reductions
//! use explicit lane arrays, since the compiler may not reorder float sums on its own.
//!
//! Transcendentals use polynomial approximations accurate to a few ulp (exp: Cephes'
//! minimax polynomial; erf: Abramowitz–Stegun 7.1.26, |error| < 1.5e-7), so activations
//! vectorise; the scalar reference keeps libm.

// Tiles index several arrays with one counter; kernels take many operands.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use super::simd::Isa;
use crate::backend::{Activation, AttentionShape, RopeShape};
use crate::model::config::RopeStyle;

/// Instantiates a generic kernel for every instruction set and dispatches on [`Isa`].
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $generic:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                fn v512($($arg: $ty),*) $(-> $ret)? { $generic($($arg),*) }
                #[target_feature(enable = "avx2,fma,f16c")]
                #[allow(clippy::too_many_arguments)]
                fn v256($($arg: $ty),*) $(-> $ret)? { $generic($($arg),*) }
                match isa {
                    // SAFETY: the backend only selects levels the CPU reported.
                    Isa::Avx512 => return unsafe { v512($($arg),*) },
                    Isa::Avx2 => return unsafe { v256($($arg),*) },
                    _ => {}
                }
            }
            let _ = isa;
            $generic($($arg),*)
        }
    };
}

const LANES: usize = 16;

/// Σ a·b with independent lanes.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let main = n / LANES * LANES;
    for (ca, cb) in a[..main]
        .chunks_exact(LANES)
        .zip(b[..main].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut sum = hsum(&acc);
    for (x, y) in a[main..].iter().zip(&b[main..]) {
        sum += x * y;
    }
    sum
}

#[inline(always)]
fn hsum(acc: &[f32; LANES]) -> f32 {
    let mut h = [0.0f32; 8];
    for i in 0..8 {
        h[i] = acc[i] + acc[i + 8];
    }
    (h[0] + h[4]) + (h[1] + h[5]) + ((h[2] + h[6]) + (h[3] + h[7]))
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let main = x.len() / LANES * LANES;
    for c in x[..main].chunks_exact(LANES) {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    hsum(&acc) + x[main..].iter().sum::<f32>()
}

#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let main = x.len() / LANES * LANES;
    for c in x[..main].chunks_exact(LANES) {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    hsum(&acc)
        + x[main..]
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>()
}

#[inline(always)]
fn stream_sum_g(x: &[f32]) -> f32 {
    sum(x)
}

multiversion!(
    /// Σ x with independent lanes: a streaming read at full vector width (bandwidth probe).
    pub fn stream_sum(x: &[f32]) -> f32 => stream_sum_g
);

/// e^x, relative error ~2 ulp over the f32 range (Cephes `expf`); branch-free.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    y * scale
}

/// erf(x), |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = 1.0 - poly * exp(-a * a);
    if x < 0.0 { -e } else { e }
}

/// One activation value (the vectorisable counterpart of `scalar::activation`).
#[inline(always)]
pub fn activation(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Silu => x / (1.0 + exp(-x)),
        Activation::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            let y = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
            // tanh(y) = 1 − 2 / (e^{2y} + 1)
            let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
            0.5 * x * (1.0 + tanh)
        }
        Activation::QuickGelu => x / (1.0 + exp(-1.702 * x)),
        Activation::Relu => x.max(0.0),
        Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
    }
}

#[inline(always)]
fn activate_g(x: &mut [f32], act: Activation) {
    // One loop per activation so each body vectorises on its own.
    macro_rules! each {
        ($a:expr) => {
            for v in x.iter_mut() {
                *v = activation($a, *v);
            }
        };
    }
    match act {
        Activation::Silu => each!(Activation::Silu),
        Activation::Gelu => each!(Activation::Gelu),
        Activation::GeluTanh => each!(Activation::GeluTanh),
        Activation::QuickGelu => each!(Activation::QuickGelu),
        Activation::Relu => each!(Activation::Relu),
        Activation::Hardswish => each!(Activation::Hardswish),
        Activation::Hardsigmoid => each!(Activation::Hardsigmoid),
    }
}

multiversion!(pub fn activate(x: &mut [f32], act: Activation) => activate_g);

#[inline(always)]
fn gated_g(gate: &[f32], up: &[f32], act: Activation, out: &mut [f32]) {
    macro_rules! each {
        ($a:expr) => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = activation($a, g) * u;
            }
        };
    }
    match act {
        Activation::Silu => each!(Activation::Silu),
        Activation::Gelu => each!(Activation::Gelu),
        Activation::GeluTanh => each!(Activation::GeluTanh),
        Activation::QuickGelu => each!(Activation::QuickGelu),
        Activation::Relu => each!(Activation::Relu),
        Activation::Hardswish => each!(Activation::Hardswish),
        Activation::Hardsigmoid => each!(Activation::Hardsigmoid),
    }
}

multiversion!(pub fn gated(gate: &[f32], up: &[f32], act: Activation, out: &mut [f32]) => gated_g);

#[inline(always)]
fn add_g(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

multiversion!(pub fn add(x: &mut [f32], y: &[f32]) => add_g);

#[inline(always)]
fn rms_norm_g(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let cols = weight.len();
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let mean_sq = dot(xr, xr) / cols as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

multiversion!(pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) => rms_norm_g);

#[inline(always)]
fn layer_norm_g(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let cols = weight.len();
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let mean = sum(xr) / cols as f32;
        let var = sum_sq_dev(xr, mean) / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &w), &b) in or.iter_mut().zip(xr).zip(weight).zip(bias) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

multiversion!(pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) => layer_norm_g);

#[inline(always)]
fn rope_g(x: &mut [f32], cos: &[f32], sin: &[f32], shape: RopeShape, pos0: usize) {
    let half = shape.rotary_dim / 2;
    let cols = shape.n_heads * shape.head_dim;
    for (r, row) in x.chunks_exact_mut(cols).enumerate() {
        let p = pos0 + r;
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(shape.head_dim) {
            match shape.style {
                RopeStyle::NeoX => {
                    let (a, b) = head[..2 * half].split_at_mut(half);
                    for i in 0..half {
                        let (x1, x2) = (a[i], b[i]);
                        a[i] = x1 * c[i] - x2 * s[i];
                        b[i] = x2 * c[i] + x1 * s[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for (i, pair) in head[..2 * half].chunks_exact_mut(2).enumerate() {
                        let (x1, x2) = (pair[0], pair[1]);
                        pair[0] = x1 * c[i] - x2 * s[i];
                        pair[1] = x2 * c[i] + x1 * s[i];
                    }
                }
            }
        }
    }
}

multiversion!(pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], shape: RopeShape, pos0: usize) => rope_g);

/// Query rows processed together by the attention kernel (they share key/value loads).
pub const ATTN_TILE: usize = 4;

/// Where one attention tile writes: row `t` of the output at `ptr + t * ld`.
#[derive(Clone, Copy)]
pub struct RowsPtr {
    pub ptr: *mut f32,
    pub ld: usize,
}

// SAFETY: attention tasks write disjoint (row, head) slices.
unsafe impl Send for RowsPtr {}
unsafe impl Sync for RowsPtr {}

/// The keys `[first, last)` any of query rows `t0..t0 + nt` sees.
pub fn key_span(
    shape: AttentionShape,
    pos0: usize,
    t0: usize,
    nt: usize,
    n_keys: usize,
) -> (usize, usize) {
    let mut first = usize::MAX;
    let mut last = 0;
    for i in 0..nt {
        let r = super::scalar::visible_keys(shape, pos0, t0 + i, n_keys);
        first = first.min(r.start);
        last = last.max(r.end);
    }
    if first > last { (0, 0) } else { (first, last) }
}

/// A key/value element type: f32 activations, or an f16 KV cache.
pub trait KvElem: Copy {
    /// Whether [`KvElem::widen`] converts (into a buffer) rather than borrowing.
    const CONVERTS: bool;
    /// `src` as f32: itself, or converted into `buf` (at least `src.len()` long).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// [`weighted_values`] by a SIMD kernel of this element type, where the CPU has one
    /// and the head is whole 64-value chunks: whether it ran.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn weighted_values_simd<const NT: usize>(
        _v: &[Self],
        _kv_cols: usize,
        _base: usize,
        _hd: usize,
        _first: usize,
        _span: usize,
        _scores: &[f32],
        _t0: usize,
        _h: usize,
        _out: RowsPtr,
    ) -> bool {
        false
    }
}

impl KvElem for f32 {
    const CONVERTS: bool = false;
    #[inline(always)]
    fn widen<'a>(src: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl KvElem for half::f16 {
    const CONVERTS: bool = true;
    #[inline(always)]
    fn widen<'a>(src: &'a [half::f16], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..src.len()];
        widen_f16(src, buf);
        buf
    }

    /// On AVX-512: each key's values widened in registers (see
    /// `simd::x86::weighted_values_f16_avx512`) instead of through a buffer.
    #[inline(always)]
    fn weighted_values_simd<const NT: usize>(
        v: &[half::f16],
        kv_cols: usize,
        base: usize,
        hd: usize,
        first: usize,
        span: usize,
        scores: &[f32],
        t0: usize,
        h: usize,
        out: RowsPtr,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(64) && has_avx512() {
            assert!((first + span) * kv_cols <= v.len() && base + hd <= kv_cols);
            assert!(scores.len() >= NT * span);
            for d0 in (0..hd).step_by(64) {
                // SAFETY: AVX-512 checked; the value rows `first..first + span` and the
                // probabilities are inside their slices (asserted above); the output rows
                // t0.. and head h's columns are this task's.
                unsafe {
                    super::simd::x86::weighted_values_f16_avx512::<NT>(
                        v.as_ptr().add(first * kv_cols + base + d0),
                        kv_cols,
                        span,
                        scores.as_ptr(),
                        out.ptr.add(t0 * out.ld + h * hd + d0),
                        out.ld,
                    )
                };
            }
            return true;
        }
        let _ = (v, kv_cols, base, hd, first, span, scores, t0, h, out);
        false
    }
}

/// Whether this CPU has the AVX-512 level (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| Isa::available().contains(&Isa::Avx512))
}

/// `dst = src` as f32: 16 values per `vcvtph2ps` where the CPU has AVX-512 (the `half`
/// crate's slice conversion goes 8 at a time through a call each, which made an f16 cache
/// slower to read than an f32 one).
fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU has AVX-512 F (checked above).
            unsafe { super::simd::x86::widen_f16_avx512(src, dst) };
            return;
        }
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
}

/// Attention of query rows `t0..t0 + nt` (at most [`ATTN_TILE`]) for head `h`. With
/// `scores_ready`, `scores[i][j − first]` already holds `scale · q·k` for the span.
/// `scores` needs `ATTN_TILE × n_keys` values — plus `head_dim` more, at its end, where keys
/// are f16: they are widened a key row (a 64-value chunk of a value row) at a time, once
/// for all the tile's query rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attention_tile_g<E: KvElem>(
    q: &[f32],
    k: &[E],
    v: &[E],
    shape: AttentionShape,
    pos0: usize,
    h: usize,
    t0: usize,
    nt: usize,
    scores: &mut [f32],
    scores_ready: bool,
    out: RowsPtr,
) {
    let hd = shape.head_dim;
    let q_cols = shape.n_heads * hd;
    let kv_cols = shape.n_kv_heads * hd;
    let n_keys = k.len() / kv_cols;
    let kvh = h / (shape.n_heads / shape.n_kv_heads);
    let ranges: [std::ops::Range<usize>; ATTN_TILE] = std::array::from_fn(|i| {
        if i < nt {
            super::scalar::visible_keys(shape, pos0, t0 + i, n_keys)
        } else {
            0..0
        }
    });
    let (first, last) = key_span(shape, pos0, t0, nt, n_keys);
    let span = last - first;
    let qh: [&[f32]; ATTN_TILE] = std::array::from_fn(|i| {
        let t = t0 + i.min(nt - 1);
        &q[t * q_cols + h * hd..t * q_cols + (h + 1) * hd]
    });
    // Scores (unless the caller computed them), masked outside each row's visible range.
    let at = scores.len() - if E::CONVERTS { hd } else { 0 };
    let (scores, key_buf) = scores.split_at_mut(at);
    for j in first..last {
        let kj = &k[j * kv_cols + kvh * hd..j * kv_cols + (kvh + 1) * hd];
        let kj = if scores_ready {
            &[][..]
        } else {
            E::widen(kj, key_buf)
        };
        for i in 0..nt {
            let s = &mut scores[i * span + (j - first)];
            if !ranges[i].contains(&j) {
                *s = f32::NEG_INFINITY;
            } else if !scores_ready {
                *s = dot(qh[i], kj) * shape.scale;
            }
        }
    }
    // Softmax per row (every row sees at least one key).
    for i in 0..nt {
        let row = &mut scores[i * span..(i + 1) * span];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for s in row.iter_mut() {
            *s = exp(*s - max);
        }
        let inv = 1.0 / sum(row);
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
    // Weighted sum of values: the tile's query rows together (see `weighted_values`).
    match nt {
        4 => weighted_values::<E, 4>(v, kv_cols, kvh * hd, hd, first, span, scores, t0, h, out),
        3 => weighted_values::<E, 3>(v, kv_cols, kvh * hd, hd, first, span, scores, t0, h, out),
        2 => weighted_values::<E, 2>(v, kv_cols, kvh * hd, hd, first, span, scores, t0, h, out),
        _ => weighted_values::<E, 1>(v, kv_cols, kvh * hd, hd, first, span, scores, t0, h, out),
    }
}

/// `out[t0 + i][h·hd..][..hd] = Σ_j p[i][j] · v[first + j]` for the `NT` query rows of a
/// tile (probabilities `p[i]` at `scores[i·span..]`, value rows `kv_cols` apart from
/// column `base`), 64 output values at a time: the rows' accumulators (NT × 64 values)
/// stay in registers while every key's value row streams past once — one load of a value
/// row serves all the tile's rows. Each output sums its keys in order with separate
/// multiply and add, as the scalar code does.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weighted_values<E: KvElem, const NT: usize>(
    v: &[E],
    kv_cols: usize,
    base: usize,
    hd: usize,
    first: usize,
    span: usize,
    scores: &[f32],
    t0: usize,
    h: usize,
    out: RowsPtr,
) {
    const CHUNK: usize = 64;
    if E::weighted_values_simd::<NT>(v, kv_cols, base, hd, first, span, scores, t0, h, out) {
        return;
    }
    let mut d0 = 0;
    while d0 < hd {
        let dn = CHUNK.min(hd - d0);
        let mut acc = [[0.0f32; CHUNK]; NT];
        let b = base + d0;
        let mut buf = [0.0f32; CHUNK];
        if dn == CHUNK {
            for jj in 0..span {
                let j = first + jj;
                let vj: &[f32; CHUNK] =
                    E::widen(&v[j * kv_cols + b..j * kv_cols + b + CHUNK], &mut buf)
                        .try_into()
                        .expect("chunk length");
                let p: [f32; NT] = std::array::from_fn(|i| scores[i * span + jj]);
                for (ai, &pi) in acc.iter_mut().zip(&p) {
                    for (a, &x) in ai.iter_mut().zip(vj) {
                        *a += pi * x;
                    }
                }
            }
        } else {
            for jj in 0..span {
                let j = first + jj;
                let vj = E::widen(&v[j * kv_cols + b..j * kv_cols + b + dn], &mut buf);
                for (i, ai) in acc.iter_mut().enumerate() {
                    let pi = scores[i * span + jj];
                    for (a, &x) in ai[..dn].iter_mut().zip(vj) {
                        *a += pi * x;
                    }
                }
            }
        }
        for (i, ai) in acc.iter().enumerate() {
            // SAFETY: row t0 + i, columns of head h: this task's alone.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out.ptr.add((t0 + i) * out.ld + h * hd + d0), dn)
            };
            o.copy_from_slice(&ai[..dn]);
        }
        d0 += dn;
    }
}

multiversion!(pub fn attention_tile(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    pos0: usize,
    h: usize,
    t0: usize,
    nt: usize,
    scores: &mut [f32],
    scores_ready: bool,
    out: RowsPtr,
) => attention_tile_g);

multiversion!(
    /// [`attention_tile`] over an f16 KV cache (`scores` with `head_dim` values more).
    pub fn attention_tile_f16(
    q: &[f32],
    k: &[half::f16],
    v: &[half::f16],
    shape: AttentionShape,
    pos0: usize,
    h: usize,
    t0: usize,
    nt: usize,
    scores: &mut [f32],
    scores_ready: bool,
    out: RowsPtr,
) => attention_tile_g);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_transcendentals_are_accurate() {
        let mut x = -20.0f32;
        while x < 20.0 {
            let (e, r) = (exp(x), x.exp());
            assert!((e - r).abs() <= 4e-7 * r, "exp({x}) = {e} vs {r}");
            let (e, r) = (erf(x), libm::erff(x));
            assert!((e - r).abs() <= 5e-7, "erf({x}) = {e} vs {r}");
            x += 0.0137;
        }
        assert!(exp(-200.0) < 1e-37);
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn activations_match_the_reference() {
        for act in [
            Activation::Silu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Relu,
            Activation::Hardswish,
            Activation::Hardsigmoid,
        ] {
            for isa in Isa::available() {
                let x: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.023).collect();
                let mut got = x.clone();
                activate(isa, &mut got, act);
                for (g, &v) in got.iter().zip(&x) {
                    let r = super::super::scalar::activation(act, v);
                    assert!(
                        (g - r).abs() <= 1e-6 * (1.0 + r.abs()),
                        "{act:?} {isa:?} {v}: {g} vs {r}"
                    );
                }
            }
        }
    }
}
