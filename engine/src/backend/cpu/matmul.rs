//! Multithreaded `out = x · wᵀ + bias` for weights in their stored format.
//!
//! Work is split over blocks of output features: each task converts one weight row at a
//! time to f32 (a no-op view for f32 weights) and dots it with every activation row, so a
//! prefill of T tokens reads and converts each weight row once, not T times.

use rayon::prelude::*;

use crate::tensor::{DType, HostTensor, convert_to_f32};

/// Output features per task: large enough to amortise scheduling, small enough to balance.
fn block_size(n_out: usize, threads: usize) -> usize {
    (n_out / (threads * 8)).clamp(8, 256)
}

/// A pointer to the output that tasks write disjoint columns of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a distinct set of columns, so no two threads touch one element.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Taking `self` makes closures capture the whole (Send) wrapper, not the raw field.
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers pass an index inside the output slice.
        unsafe { self.0.add(i) }
    }
}

/// Dot product with independent accumulators so the compiler can vectorise it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (ca, cb) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// Must be called inside the backend's thread pool.
pub fn matmul(x: &[f32], w: &HostTensor, bias: Option<&[f32]>, out: &mut [f32], threads: usize) {
    let (n_out, k) = w.rows_cols();
    let t_rows = x.len() / k.max(1);
    assert_eq!(out.len(), t_rows * n_out);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let bytes = w.bytes();
    let row_bytes = w.row_bytes();
    let block = block_size(n_out, threads);
    let n_blocks = n_out.div_ceil(block);

    (0..n_blocks).into_par_iter().for_each_init(
        || vec![0.0f32; k],
        |row_buf, b| {
            for n in b * block..((b + 1) * block).min(n_out) {
                let row_data = &bytes[n * row_bytes..(n + 1) * row_bytes];
                let row: &[f32] = if w.dtype == DType::F32 {
                    bytemuck::cast_slice(row_data)
                } else {
                    convert_to_f32(w.dtype, row_data, row_buf);
                    row_buf
                };
                let b_n = bias.map_or(0.0, |b| b[n]);
                for (t, xr) in x.chunks_exact(k).enumerate() {
                    let v = dot(xr, row) + b_n;
                    // SAFETY: `t * n_out + n` is in bounds (checked above) and column `n`
                    // belongs to this task alone.
                    unsafe { *out_ptr.at(t * n_out + n) = v };
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::scalar;
    use crate::tensor::Storage;
    use half::{bf16, f16};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
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

    fn weight(dtype: DType, n: usize, k: usize, seed: u64) -> HostTensor {
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

    #[test]
    fn threaded_matches_scalar_on_ragged_shapes() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for dtype in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
        ] {
            for &(t, n, k) in &[
                (1, 1, 1),
                (1, 7, 33),
                (3, 300, 17),
                (5, 1000, 64),
                (2, 9, 129),
            ] {
                let w = weight(dtype, n, k, (n * 31 + k) as u64);
                let x = rand_vec(t * k, 7 + t as u64);
                let bias = rand_vec(n, 99);
                let mut expected = vec![0.0; t * n];
                scalar::matmul(&x, &w, Some(&bias), &mut expected);
                let mut got = vec![0.0; t * n];
                pool.install(|| matmul(&x, &w, Some(&bias), &mut got, 3));
                for (a, b) in got.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()) * k as f32,
                        "{dtype} {t}x{n}x{k}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
