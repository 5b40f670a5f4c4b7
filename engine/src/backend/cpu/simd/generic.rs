//! Portable kernels: the arithmetic of the scalar reference, over the activation layout
//! the SIMD kernels use. Also the fallback on CPUs without a SIMD flavour.

// Tiles index several arrays with one counter; kernels take many operands.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use half::f16;

use super::{OutPtr, Q8Acts, for_tiles};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use crate::tensor::DType;

/// One block of activations as the reference quantiser computes it.
#[inline]
pub fn quantize_block(x: &[f32], qs: &mut [i8]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    (d, d * sum as f32)
}

pub fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (b, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        (d[b], s[b]) = quantize_block(xb, qb);
    }
}

/// Σ over blocks of weight row `w` (raw bytes of `dtype` blocks) times activation row `t`.
pub fn dot_q(dtype: DType, w: &[u8], acts: &Q8Acts, t: usize) -> f32 {
    let nb = acts.nb;
    let qs = &acts.qs[t * nb * QK..(t + 1) * nb * QK];
    let (d, s) = (&acts.d[t * nb..(t + 1) * nb], &acts.s[t * nb..(t + 1) * nb]);
    let mut sum = 0.0f32;
    match dtype {
        DType::Q4_0 => {
            let blocks: &[BlockQ4_0] = bytemuck::cast_slice(&w[..nb * 18]);
            for (b, wb) in blocks.iter().enumerate() {
                let y = &qs[b * QK..(b + 1) * QK];
                let mut isum = 0i32;
                for j in 0..QK / 2 {
                    isum += ((wb.qs[j] & 0xF) as i32 - 8) * y[j] as i32;
                    isum += ((wb.qs[j] >> 4) as i32 - 8) * y[j + QK / 2] as i32;
                }
                sum += isum as f32 * wb.d.to_f32() * d[b];
            }
        }
        DType::Q4_1 => {
            let blocks: &[BlockQ4_1] = bytemuck::cast_slice(&w[..nb * 20]);
            for (b, wb) in blocks.iter().enumerate() {
                let y = &qs[b * QK..(b + 1) * QK];
                let mut isum = 0i32;
                for j in 0..QK / 2 {
                    isum += (wb.qs[j] & 0xF) as i32 * y[j] as i32;
                    isum += (wb.qs[j] >> 4) as i32 * y[j + QK / 2] as i32;
                }
                sum += isum as f32 * wb.d.to_f32() * d[b] + wb.m.to_f32() * s[b];
            }
        }
        DType::Q8_0 => {
            let blocks: &[BlockQ8_0] = bytemuck::cast_slice(&w[..nb * 34]);
            for (b, wb) in blocks.iter().enumerate() {
                let y = &qs[b * QK..(b + 1) * QK];
                let isum: i32 = wb
                    .qs
                    .iter()
                    .zip(y)
                    .map(|(&p, &q)| p as i32 * q as i32)
                    .sum();
                sum += isum as f32 * wb.d.to_f32() * d[b];
            }
        }
        other => panic!("dot_q on {other}"),
    }
    sum
}

/// # Safety
/// See [`super::qgemm`].
pub unsafe fn qgemm(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    for t in 0..acts.rows() {
        for r in 0..rows {
            let v = dot_q(dtype, &w[r * row_bytes..(r + 1) * row_bytes], &acts, t);
            unsafe { out.write(t, r0 + r, v) };
        }
    }
}

/// A dot product with independent accumulators, so the compiler can vectorise it.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
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
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in a[main..].iter().zip(&b[main..]) {
        sum += x * y;
    }
    sum
}

/// # Safety
/// See [`super::fgemm`].
pub unsafe fn fgemm(w: &[f32], rows: usize, x: &[f32], k: usize, out: OutPtr, r0: usize) {
    let t_rows = x.len() / k.max(1);
    for_tiles(rows, t_rows, |r, c, nr, nc| {
        for t in c..c + nc {
            for n in r..r + nr {
                let v = dot_f32(&w[n * k..(n + 1) * k], &x[t * k..(t + 1) * k]);
                unsafe { out.write(t, r0 + n, v) };
            }
        }
    });
}

/// f16 bits to f32 (for kernels reading block scales).
#[inline(always)]
pub fn f16_bits(b: u16) -> f32 {
    f16::from_bits(b).to_f32()
}

/// One block of activations quantised to int16 (scale `amax / 32767`).
#[inline]
pub fn quantize_block16(x: &[f32], qs: &mut [i16]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 32767.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i16;
        sum += *q as i32;
    }
    (d, d * sum as f32)
}

pub fn quantize16(x: &[f32], qs: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    for (b, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        (d[b], s[b]) = quantize_block16(xb, qb);
    }
}

/// [`dot_q`] with int16 activations.
pub fn dot_q16(dtype: DType, w: &[u8], acts: &super::Q16Acts, t: usize) -> f32 {
    let nb = acts.nb;
    let qs = &acts.qs[t * nb * QK..(t + 1) * nb * QK];
    let (d, s) = (&acts.d[t * nb..(t + 1) * nb], &acts.s[t * nb..(t + 1) * nb]);
    let mut sum = 0.0f32;
    match dtype {
        DType::Q4_0 => {
            let blocks: &[BlockQ4_0] = bytemuck::cast_slice(&w[..nb * 18]);
            for (b, wb) in blocks.iter().enumerate() {
                let y = &qs[b * QK..(b + 1) * QK];
                let mut isum = 0i32;
                for j in 0..QK / 2 {
                    isum += ((wb.qs[j] & 0xF) as i32 - 8) * y[j] as i32;
                    isum += ((wb.qs[j] >> 4) as i32 - 8) * y[j + QK / 2] as i32;
                }
                sum += isum as f32 * wb.d.to_f32() * d[b];
            }
        }
        DType::Q4_1 => {
            let blocks: &[BlockQ4_1] = bytemuck::cast_slice(&w[..nb * 20]);
            for (b, wb) in blocks.iter().enumerate() {
                let y = &qs[b * QK..(b + 1) * QK];
                let mut isum = 0i32;
                for j in 0..QK / 2 {
                    isum += (wb.qs[j] & 0xF) as i32 * y[j] as i32;
                    isum += (wb.qs[j] >> 4) as i32 * y[j + QK / 2] as i32;
                }
                sum += isum as f32 * wb.d.to_f32() * d[b] + wb.m.to_f32() * s[b];
            }
        }
        DType::Q8_0 => {
            let blocks: &[BlockQ8_0] = bytemuck::cast_slice(&w[..nb * 34]);
            for (b, wb) in blocks.iter().enumerate() {
                let y = &qs[b * QK..(b + 1) * QK];
                let isum: i32 = wb
                    .qs
                    .iter()
                    .zip(y)
                    .map(|(&p, &q)| p as i32 * q as i32)
                    .sum();
                sum += isum as f32 * wb.d.to_f32() * d[b];
            }
        }
        other => panic!("dot_q16 on {other}"),
    }
    sum
}

/// # Safety
/// See [`super::qgemm16`].
pub unsafe fn qgemm16(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    for t in 0..acts.rows() {
        for r in 0..rows {
            let v = dot_q16(dtype, &w[r * row_bytes..(r + 1) * row_bytes], &acts, t);
            unsafe { out.write(t, r0 + r, v) };
        }
    }
}
