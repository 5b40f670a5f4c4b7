//! aarch64 kernels: Advanced SIMD, with the dot-product extension where the CPU has it.
//!
//! One 32-value block is two 16-byte vectors. With `dotprod`, `sdot` multiplies signed
//! bytes four at a time into 32-bit lanes (through inline assembly: `vdotq_s32` is not
//! stable in Rust yet); without it, `smull`/`smull2` and `sadalp` do the same in two steps.
//! Q4 nibbles are expanded to signed bytes (Q4_0 minus its 8 offset) before the dot.

// Tiles index several arrays with one counter; kernels take many operands.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::aarch64::*;

use super::{OutPtr, Q8Acts, for_tiles};
use crate::quant::QK;
use crate::tensor::DType;

/// # Safety
/// Slices as in [`super::quantize_rows`] (NEON is baseline on aarch64).
#[target_feature(enable = "neon")]
pub unsafe fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = d.len();
    assert!(x.len() >= nb * QK && qs.len() >= nb * QK && s.len() >= nb);
    for b in 0..nb {
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let v: [float32x4_t; 8] = std::array::from_fn(|i| vld1q_f32(p.add(4 * i)));
            let mut m = vabsq_f32(v[0]);
            for vi in &v[1..] {
                m = vmaxq_f32(m, vabsq_f32(*vi));
            }
            let amax = vmaxvq_f32(m);
            let dd = amax / 127.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            let mut sum = vdupq_n_s32(0);
            let q: [int32x4_t; 8] = std::array::from_fn(|i| {
                // Round half away from zero, as `f32::round` in the reference.
                let qi = vcvtaq_s32_f32(vmulq_n_f32(v[i], id));
                sum = vaddq_s32(sum, qi);
                qi
            });
            let o = qs.as_mut_ptr().add(b * QK);
            for h in 0..2 {
                let a = vcombine_s16(vqmovn_s32(q[4 * h]), vqmovn_s32(q[4 * h + 1]));
                let bb = vcombine_s16(vqmovn_s32(q[4 * h + 2]), vqmovn_s32(q[4 * h + 3]));
                vst1q_s8(o.add(16 * h), vcombine_s8(vqmovn_s16(a), vqmovn_s16(bb)));
            }
            d[b] = dd;
            s[b] = dd * vaddvq_s32(sum) as f32;
        }
    }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack)
        );
    }
    acc
}

#[inline(always)]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    unsafe {
        if DOT {
            sdot(acc, a, b)
        } else {
            let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let hi = vmull_high_s8(a, b);
            vpadalq_s16(vpadalq_s16(acc, lo), hi)
        }
    }
}

#[inline(always)]
unsafe fn f16_bits(p: *const u8) -> f32 {
    half::f16::from_bits(unsafe { std::ptr::read_unaligned(p as *const u16) }).to_f32()
}

/// Weight block `p` of `dtype` as two signed byte vectors (elements 0–15, 16–31), d and m.
#[inline(always)]
unsafe fn load_block(dtype: DType, p: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
    unsafe {
        match dtype {
            DType::Q4_0 => {
                let w = vld1q_u8(p.add(2));
                let lo = vreinterpretq_s8_u8(vandq_u8(w, vdupq_n_u8(0x0F)));
                let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(w));
                let eight = vdupq_n_s8(8);
                (vsubq_s8(lo, eight), vsubq_s8(hi, eight), f16_bits(p), 0.0)
            }
            DType::Q4_1 => {
                let w = vld1q_u8(p.add(4));
                let lo = vreinterpretq_s8_u8(vandq_u8(w, vdupq_n_u8(0x0F)));
                let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(w));
                (lo, hi, f16_bits(p), f16_bits(p.add(2)))
            }
            _ => {
                let q = p.add(2) as *const i8;
                (vld1q_s8(q), vld1q_s8(q.add(16)), f16_bits(p), 0.0)
            }
        }
    }
}

#[inline(always)]
unsafe fn qtile<const R: usize, const C: usize, const DOT: bool>(
    dtype: DType,
    bytes: usize,
    w: *const u8,
    row_bytes: usize,
    acts: &Q8Acts,
    t0: usize,
    out: OutPtr,
    n0: usize,
) {
    unsafe {
        let nb = acts.nb;
        let k = nb * QK;
        let mut acc = [[vdupq_n_f32(0.0); C]; R];
        let mut corr = [[0.0f32; C]; R];
        for b in 0..nb {
            let mut y = [(vdupq_n_s8(0), vdupq_n_s8(0)); C];
            let mut dx = [0.0f32; C];
            let mut sx = [0.0f32; C];
            for c in 0..C {
                let t = t0 + c;
                let q = acts.qs.as_ptr().add(t * k + b * QK);
                y[c] = (vld1q_s8(q), vld1q_s8(q.add(16)));
                dx[c] = *acts.d.get_unchecked(t * nb + b);
                sx[c] = *acts.s.get_unchecked(t * nb + b);
            }
            for r in 0..R {
                let (lo, hi, dw, m) = load_block(dtype, w.add(r * row_bytes + b * bytes));
                for c in 0..C {
                    let dot = dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), lo, y[c].0), hi, y[c].1);
                    acc[r][c] = vfmaq_n_f32(acc[r][c], vcvtq_f32_s32(dot), dw * dx[c]);
                    corr[r][c] += m * sx[c];
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, vaddvq_f32(acc[r][c]) + corr[r][c]);
            }
        }
    }
}

#[inline(always)]
unsafe fn qgemm_impl<const DOT: bool>(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    let bytes = dtype.type_size();
    let wp = w.as_ptr();
    for_tiles(rows, acts.rows(), |r, c, nr, nc| unsafe {
        let p = wp.add(r * row_bytes);
        match (nr, nc) {
            (4, 4) => qtile::<4, 4, DOT>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
            (4, _) => qtile::<4, 1, DOT>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
            (_, 4) => qtile::<1, 4, DOT>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
            _ => qtile::<1, 1, DOT>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
        }
    });
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn qgemm_dot(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    unsafe { qgemm_impl::<true>(dtype, w, row_bytes, rows, acts, out, r0) }
}

#[target_feature(enable = "neon")]
unsafe fn qgemm_plain(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    unsafe { qgemm_impl::<false>(dtype, w, row_bytes, rows, acts, out, r0) }
}

/// # Safety
/// `dot` only on CPUs with the dot-product extension; arguments as in [`super::qgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn qgemm(
    dot: bool,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    assert!(
        matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0),
        "qgemm on {dtype}"
    );
    unsafe {
        if dot {
            qgemm_dot(dtype, w, row_bytes, rows, acts, out, r0)
        } else {
            qgemm_plain(dtype, w, row_bytes, rows, acts, out, r0)
        }
    }
}

#[inline(always)]
unsafe fn ftile<const R: usize, const C: usize>(
    w: *const f32,
    x: *const f32,
    k: usize,
    out: OutPtr,
    t0: usize,
    n0: usize,
) {
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); C]; R];
        let mut i = 0;
        while i + 4 <= k {
            let xv: [float32x4_t; C] = std::array::from_fn(|c| vld1q_f32(x.add(c * k + i)));
            for r in 0..R {
                let wv = vld1q_f32(w.add(r * k + i));
                for c in 0..C {
                    acc[r][c] = vfmaq_f32(acc[r][c], wv, xv[c]);
                }
            }
            i += 4;
        }
        let mut tail = [[0.0f32; C]; R];
        while i < k {
            for r in 0..R {
                for c in 0..C {
                    tail[r][c] += *w.add(r * k + i) * *x.add(c * k + i);
                }
            }
            i += 1;
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, vaddvq_f32(acc[r][c]) + tail[r][c]);
            }
        }
    }
}

/// # Safety
/// Arguments as in [`super::fgemm`].
#[target_feature(enable = "neon")]
pub unsafe fn fgemm(w: &[f32], rows: usize, x: &[f32], k: usize, out: OutPtr, r0: usize) {
    let t_rows = x.len() / k.max(1);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    for_tiles(rows, t_rows, |r, c, nr, nc| unsafe {
        let (w, x) = (wp.add(r * k), xp.add(c * k));
        match (nr, nc) {
            (4, 4) => ftile::<4, 4>(w, x, k, out, c, r0 + r),
            (4, _) => ftile::<4, 1>(w, x, k, out, c, r0 + r),
            (_, 4) => ftile::<1, 4>(w, x, k, out, c, r0 + r),
            _ => ftile::<1, 1>(w, x, k, out, c, r0 + r),
        }
    });
}

/// # Safety
/// Slices as in [`super::quantize_rows16`].
#[target_feature(enable = "neon")]
pub unsafe fn quantize16(x: &[f32], qs: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    let nb = d.len();
    assert!(x.len() >= nb * QK && qs.len() >= nb * QK && s.len() >= nb);
    for b in 0..nb {
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let v: [float32x4_t; 8] = std::array::from_fn(|i| vld1q_f32(p.add(4 * i)));
            let mut m = vabsq_f32(v[0]);
            for vi in &v[1..] {
                m = vmaxq_f32(m, vabsq_f32(*vi));
            }
            let amax = vmaxvq_f32(m);
            let dd = amax / 32767.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            let mut sum = vdupq_n_s32(0);
            let o = qs.as_mut_ptr().add(b * QK);
            for (i, vi) in v.iter().enumerate() {
                let qi = vcvtaq_s32_f32(vmulq_n_f32(*vi, id));
                let qi = vminq_s32(vmaxq_s32(qi, vdupq_n_s32(-32768)), vdupq_n_s32(32767));
                sum = vaddq_s32(sum, qi);
                vst1_s16(o.add(4 * i), vmovn_s32(qi));
            }
            d[b] = dd;
            s[b] = dd * vaddvq_s32(sum) as f32;
        }
    }
}

/// Weight block `p` widened to four i16x8 vectors (elements 0–7, 8–15, 16–23, 24–31).
#[inline(always)]
unsafe fn load_block16(dtype: DType, p: *const u8) -> ([int16x8_t; 4], f32, f32) {
    unsafe {
        let (lo, hi, d, m) = load_block(dtype, p);
        (
            [
                vmovl_s8(vget_low_s8(lo)),
                vmovl_high_s8(lo),
                vmovl_s8(vget_low_s8(hi)),
                vmovl_high_s8(hi),
            ],
            d,
            m,
        )
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q16tile<const R: usize, const C: usize>(
    dtype: DType,
    bytes: usize,
    w: *const u8,
    row_bytes: usize,
    acts: &super::Q16Acts,
    t0: usize,
    out: OutPtr,
    n0: usize,
) {
    unsafe {
        let nb = acts.nb;
        let k = nb * QK;
        let mut acc = [[vdupq_n_f32(0.0); C]; R];
        let mut corr = [[0.0f32; C]; R];
        for b in 0..nb {
            let mut y = [[vdupq_n_s16(0); 4]; C];
            let mut dx = [0.0f32; C];
            let mut sx = [0.0f32; C];
            for c in 0..C {
                let t = t0 + c;
                let q = acts.qs.as_ptr().add(t * k + b * QK);
                y[c] = std::array::from_fn(|i| vld1q_s16(q.add(8 * i)));
                dx[c] = *acts.d.get_unchecked(t * nb + b);
                sx[c] = *acts.s.get_unchecked(t * nb + b);
            }
            for r in 0..R {
                let (wv, dw, m) = load_block16(dtype, w.add(r * row_bytes + b * bytes));
                for c in 0..C {
                    let mut dot = vmull_s16(vget_low_s16(wv[0]), vget_low_s16(y[c][0]));
                    dot = vmlal_high_s16(dot, wv[0], y[c][0]);
                    for i in 1..4 {
                        dot = vmlal_s16(dot, vget_low_s16(wv[i]), vget_low_s16(y[c][i]));
                        dot = vmlal_high_s16(dot, wv[i], y[c][i]);
                    }
                    acc[r][c] = vfmaq_n_f32(acc[r][c], vcvtq_f32_s32(dot), dw * dx[c]);
                    corr[r][c] += m * sx[c];
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, vaddvq_f32(acc[r][c]) + corr[r][c]);
            }
        }
    }
}

/// # Safety
/// Arguments as in [`super::qgemm16`].
#[target_feature(enable = "neon")]
pub unsafe fn qgemm16(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    assert!(
        matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0),
        "qgemm16 on {dtype}"
    );
    let bytes = dtype.type_size();
    let wp = w.as_ptr();
    for_tiles(rows, acts.rows(), |r, c, nr, nc| unsafe {
        let p = wp.add(r * row_bytes);
        match (nr, nc) {
            (4, 4) => q16tile::<4, 4>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
            (4, _) => q16tile::<4, 1>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
            (_, 4) => q16tile::<1, 4>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
            _ => q16tile::<1, 1>(dtype, bytes, p, row_bytes, &acts, c, out, r0 + r),
        }
    });
}
