//! The CPU backend: scalar reference kernels (`scalar`) and the multithreaded paths the
//! models run (`matmul`, attention split over heads). Weights are the loaded bytes
//! themselves (memory-mapped where the file allowed it); 1-D weights (norms, biases) are
//! converted to f32 once at load because every token reads all of them.

pub mod matmul;
pub mod scalar;

use rayon::prelude::*;

use std::sync::Arc;

use super::{Activation, AttentionShape, Backend, Grid, RopeShape};
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};

/// Activations: `rows × cols` f32 values in a buffer with room for `capacity` rows.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl CpuTensor {
    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[..self.rows * self.cols]
    }
    fn capacity(&self) -> usize {
        self.data.len().checked_div(self.cols).unwrap_or(0)
    }
}

#[derive(Clone)]
pub struct CpuBackend {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
}

impl CpuBackend {
    /// A backend running on `threads` threads (default: the machine's available parallelism).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let threads = threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("pocketvlm-cpu-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
        Ok(CpuBackend {
            pool: Arc::new(pool),
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    fn f32_slice<'a>(&self, w: &'a HostTensor) -> &'a [f32] {
        assert_eq!(
            w.dtype,
            DType::F32,
            "small weights are converted to f32 at load"
        );
        bytemuck::cast_slice(w.bytes())
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = HostTensor;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn weight(&self, t: HostTensor) -> Result<HostTensor> {
        if t.shape.len() <= 1 && t.dtype != DType::F32 {
            return Ok(HostTensor::from_f32(t.shape.clone(), &t.to_f32_vec()));
        }
        Ok(t)
    }

    fn weight_bytes(&self, w: &HostTensor) -> usize {
        w.bytes().len()
    }

    fn tensor(&self, rows: usize, cols: usize) -> CpuTensor {
        CpuTensor {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        }
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
            t.data.resize(rows * t.cols, 0.0);
        }
    }

    fn write(&self, t: &mut CpuTensor, data: &[f32]) {
        let rows = data.len() / t.cols;
        self.reserve_rows(t, rows);
        t.rows = rows;
        t.as_mut_slice().copy_from_slice(data);
    }

    fn read(&self, t: &CpuTensor) -> Vec<f32> {
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
        scalar::rms_norm(
            x.as_slice(),
            self.f32_slice(weight),
            eps,
            out.as_mut_slice(),
        );
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
        self.pool.install(|| {
            out.as_mut_slice()
                .par_chunks_mut(x.cols)
                .zip(x.as_slice().par_chunks(x.cols))
                .for_each(|(o, xr)| scalar::layer_norm(xr, w, b, eps, o));
        });
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
        self.pool
            .install(|| matmul::matmul(x.as_slice(), w, bias, out.as_mut_slice(), self.threads));
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        cos: &CpuTensor,
        sin: &CpuTensor,
        shape: RopeShape,
        pos0: usize,
    ) {
        scalar::rope(
            x.as_mut_slice(),
            cos.as_slice(),
            sin.as_slice(),
            shape,
            pos0,
        );
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
        cache.data[pos0 * c..end * c].copy_from_slice(src.as_slice());
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
        let hd = shape.head_dim;
        let kv_cols = shape.n_kv_heads * hd;
        let n_keys = k.rows;
        let (k, v) = (k.as_slice(), v.as_slice());
        let q_data = q.as_slice();
        // One task per (row, head): each writes its own head_dim slice of `out`.
        self.pool.install(|| {
            out.as_mut_slice()
                .par_chunks_mut(hd)
                .enumerate()
                .for_each(|(i, oh)| {
                    let (t, h) = (i / shape.n_heads, i % shape.n_heads);
                    let kvh = h / (shape.n_heads / shape.n_kv_heads);
                    let keys = scalar::visible_keys(shape, pos0, t, n_keys);
                    // Gather this head's visible keys and values into contiguous rows.
                    let mut kh = Vec::with_capacity(keys.len() * hd);
                    let mut vh = Vec::with_capacity(keys.len() * hd);
                    for p in keys {
                        let s = p * kv_cols + kvh * hd;
                        kh.extend_from_slice(&k[s..s + hd]);
                        vh.extend_from_slice(&v[s..s + hd]);
                    }
                    let one_head = AttentionShape {
                        n_heads: 1,
                        n_kv_heads: 1,
                        causal: false,
                        window: None,
                        ..shape
                    };
                    let qh = &q_data[t * shape.n_heads * hd + h * hd..][..hd];
                    scalar::attention(qh, &kh, &vh, one_head, 0, oh);
                });
        });
    }

    fn activate(&self, x: &mut CpuTensor, act: Activation) {
        self.pool.install(|| {
            x.as_mut_slice()
                .par_chunks_mut(4096)
                .for_each(|c| scalar::activate(c, act));
        });
    }

    fn gated(&self, gate: &CpuTensor, up: &CpuTensor, act: Activation, out: &mut CpuTensor) {
        self.set_rows(out, gate.rows);
        self.pool.install(|| {
            out.as_mut_slice()
                .par_chunks_mut(4096)
                .zip(
                    gate.as_slice()
                        .par_chunks(4096)
                        .zip(up.as_slice().par_chunks(4096)),
                )
                .for_each(|(o, (g, u))| scalar::gated(g, u, act, o));
        });
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) {
        assert_eq!((x.rows, x.cols), (y.rows, y.cols));
        scalar::add(x.as_mut_slice(), y.as_slice());
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
        let cols = x.cols;
        self.pool.install(|| {
            x.as_mut_slice()
                .par_chunks_mut(cols.max(1))
                .for_each(scalar::softmax);
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

    #[test]
    fn attention_matches_scalar_on_ragged_shapes() {
        let be = CpuBackend::new(Some(3)).unwrap();
        for &(rows, pos0, heads, kv, hd) in &[(1, 0, 4, 2, 8), (5, 3, 6, 3, 5), (7, 0, 2, 1, 13)] {
            let shape = AttentionShape {
                n_heads: heads,
                n_kv_heads: kv,
                head_dim: hd,
                scale: 0.3,
                causal: true,
                window: if rows > 4 { Some(3) } else { None },
            };
            let ctx = pos0 + rows;
            let q = rand_vec(rows * heads * hd, 1);
            let k = rand_vec(ctx * kv * hd, 2);
            let v = rand_vec(ctx * kv * hd, 3);
            let mut expected = vec![0.0; rows * heads * hd];
            scalar::attention(&q, &k, &v, shape, pos0, &mut expected);

            let mut qt = be.tensor(rows, heads * hd);
            be.write(&mut qt, &q);
            let mut kt = be.tensor(ctx, kv * hd);
            be.write(&mut kt, &k);
            let mut vt = be.tensor(ctx, kv * hd);
            be.write(&mut vt, &v);
            let mut out = be.tensor(rows, heads * hd);
            be.attention(&qt, &kt, &vt, shape, pos0, &mut out);
            for (a, b) in be.read(&out).iter().zip(&expected) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
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
