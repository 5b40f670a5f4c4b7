//! ggml-compatible quantised blocks: the bytes on disk (GGUF, our quantised safetensors),
//! in memory and in the kernels are the same `#[repr(C)]` structs.
//!
//! Every format quantises runs of [`QK`] = 32 consecutive values of a row:
//! - `Q4_0` (18 bytes): f16 scale `d`, 16 bytes of nibbles; value = (q − 8)·d. Low nibbles
//!   hold elements 0..16 of the block, high nibbles 16..32.
//! - `Q4_1` (20 bytes): f16 `d`, f16 `m`, nibbles as Q4_0; value = q·d + m.
//! - `Q8_0` (34 bytes): f16 `d`, 32 × i8; value = q·d.
//! - `Q8_1` (activations only, never stored): like Q8_0 plus `s = d·Σq`, which the Q4_1 dot
//!   product needs for its offset term.
//!
//! Quantisers follow ggml's reference (`quantize_row_*_ref`) exactly, so a file we write
//! is bit-identical to one llama.cpp writes from the same f32 values.

pub mod kquants;

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::tensor::DType;

/// Values per block.
pub const QK: usize = 32;

/// A weight matrix stored as `target` (quantise-on-load). Matrices whose rows are not whole
/// blocks keep their format, as llama.cpp does (SigLIP's 4304-wide FFN, tiny test models).
pub fn convert_matrix(
    t: crate::tensor::HostTensor,
    target: Option<DType>,
) -> crate::tensor::HostTensor {
    use crate::tensor::{HostTensor, Storage};
    let Some(target) = target else { return t };
    let (_, cols) = t.rows_cols();
    if t.dtype == target || !cols.is_multiple_of(target.block_size()) {
        return t;
    }
    let values = t.to_f32_vec();
    HostTensor::new(
        target,
        t.shape.clone(),
        Storage::from_bytes(&quantize(target, &values)),
    )
}

/// `x` (a whole number of blocks for block types) stored as `dtype`.
pub fn quantize(dtype: DType, x: &[f32]) -> Vec<u8> {
    fn blocks<T: Pod + Zeroable>(x: &[f32], f: fn(&[f32], &mut [T])) -> Vec<u8> {
        let mut out = vec![T::zeroed(); x.len() / QK];
        f(x, &mut out);
        bytemuck::cast_slice(&out).to_vec()
    }
    match dtype {
        DType::F32 => bytemuck::cast_slice(x).to_vec(),
        DType::F16 => x
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => x
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::Q4_0 => blocks(x, quantize_q4_0),
        DType::Q4_1 => blocks(x, quantize_q4_1),
        DType::Q8_0 => blocks(x, quantize_q8_0),
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// Activation blocks for the Q4_1 dot product; f32 scales (internal, not a file format).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f32,
    /// `d · Σ qs`.
    pub s: f32,
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

pub fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        // The value of largest magnitude, with its sign: it maps to −8.
        let mut max = 0.0f32;
        for &v in xb {
            if v.abs() > max.abs() {
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            let x0 = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let x1 = ((xb[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = x0 | (x1 << 4);
        }
    }
}

pub fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, ob) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            ob[j] = ((b.qs[j] & 0xF) as i32 - 8) as f32 * d;
            ob[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn quantize_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let min = xb.iter().copied().fold(f32::MAX, f32::min);
        let max = xb.iter().copied().fold(-f32::MAX, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        for j in 0..QK / 2 {
            let x0 = (((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
            let x1 = (((xb[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = x0 | (x1 << 4);
        }
    }
}

pub fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, ob) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            ob[j] = (b.qs[j] & 0xF) as f32 * d + m;
            ob[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, ob) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in ob.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Activations for the integer dot products (f32 scale kept exact).
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

/// Σ over blocks of a Q4_0 row times Q8_1 activations (ggml's `vec_dot_q4_0_q8_0`).
pub fn dot_q4_0_q8_1(w: &[BlockQ4_0], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (b, a) in w.iter().zip(x) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += ((b.qs[j] & 0xF) as i32 - 8) * a.qs[j] as i32;
            isum += ((b.qs[j] >> 4) as i32 - 8) * a.qs[j + QK / 2] as i32;
        }
        sum += isum as f32 * b.d.to_f32() * a.d;
    }
    sum
}

/// Σ over blocks of a Q4_1 row times Q8_1 activations: d·dₓ·Σq·qₓ + m·sₓ.
pub fn dot_q4_1_q8_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (b, a) in w.iter().zip(x) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += (b.qs[j] & 0xF) as i32 * a.qs[j] as i32;
            isum += (b.qs[j] >> 4) as i32 * a.qs[j + QK / 2] as i32;
        }
        sum += isum as f32 * b.d.to_f32() * a.d + b.m.to_f32() * a.s;
    }
    sum
}

pub fn dot_q8_0_q8_1(w: &[BlockQ8_0], x: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (b, a) in w.iter().zip(x) {
        let isum: i32 =
            b.qs.iter()
                .zip(&a.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += isum as f32 * b.d.to_f32() * a.d;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn round_trips_within_the_format_error() {
        let x = data(32 * 7, 1);
        let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let mut out = vec![0.0; x.len()];

        let mut b4 = vec![BlockQ4_0::zeroed(); 7];
        quantize_q4_0(&x, &mut b4);
        dequantize_q4_0(&b4, &mut out);
        let err = x
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // Rounding costs d/2; the extreme opposite the one mapped to −8 clips at +7, a full d.
        assert!(err <= amax / 8.0 + 1e-3, "q4_0 {err}");

        let mut b41 = vec![BlockQ4_1::zeroed(); 7];
        quantize_q4_1(&x, &mut b41);
        dequantize_q4_1(&b41, &mut out);
        let err = x
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err <= 2.0 * amax / 15.0 * 0.51 + 1e-2, "q4_1 {err}");

        let mut b8 = vec![BlockQ8_0::zeroed(); 7];
        quantize_q8_0(&x, &mut b8);
        dequantize_q8_0(&b8, &mut out);
        let err = x
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err <= amax / 127.0 * 0.51 + 1e-3, "q8_0 {err}");
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let x = vec![0.0; 32];
        let mut b = [BlockQ4_0::zeroed()];
        quantize_q4_0(&x, &mut b);
        let mut out = vec![1.0; 32];
        dequantize_q4_0(&b, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn integer_dots_match_dequantised_dots() {
        let w = data(32 * 5, 3);
        let x = data(32 * 5, 4);
        let mut xq = vec![BlockQ8_1::zeroed(); 5];
        quantize_q8_1(&x, &mut xq);
        let mut xd = vec![0.0; x.len()];
        for (b, o) in xq.iter().zip(xd.chunks_exact_mut(32)) {
            for (v, &q) in o.iter_mut().zip(&b.qs) {
                *v = q as f32 * b.d;
            }
        }
        let mut wd = vec![0.0; w.len()];
        let check = |got: f32, wd: &[f32]| {
            let exact: f32 = wd.iter().zip(&xd).map(|(a, b)| a * b).sum();
            assert!(
                (got - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                "{got} vs {exact}"
            );
        };
        let mut b = vec![BlockQ4_0::zeroed(); 5];
        quantize_q4_0(&w, &mut b);
        dequantize_q4_0(&b, &mut wd);
        check(dot_q4_0_q8_1(&b, &xq), &wd);
        let mut b = vec![BlockQ4_1::zeroed(); 5];
        quantize_q4_1(&w, &mut b);
        dequantize_q4_1(&b, &mut wd);
        check(dot_q4_1_q8_1(&b, &xq), &wd);
        let mut b = vec![BlockQ8_0::zeroed(); 5];
        quantize_q8_0(&w, &mut b);
        dequantize_q8_0(&b, &mut wd);
        check(dot_q8_0_q8_1(&b, &xq), &wd);
    }
}
