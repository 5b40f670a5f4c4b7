//! The wgpu backend: every op as a WGSL compute shader (`shaders/`), one code base for
//! Vulkan, Metal, DX12 and GL.
//!
//! - Weights live in GPU buffers in their stored format ([`weights`]), split by rows under
//!   the adapter's storage-binding limit (128 MiB on many phones).
//! - Activations are f32 buffers; the KV cache is a pair of such tensors per layer that
//!   grows geometrically on the device.
//! - Ops record dispatches; nothing is submitted until the host needs a result
//!   ([`device`]), so a decode step is one command buffer and one readback — of a single
//!   token id when greedy decoding uses [`Backend::argmax`].
//! - Two shader paths: the plain one uses only what wgpu's downlevel limits guarantee
//!   (≤ 256 invocations and < 16 KiB workgroup memory per workgroup, ≤ 4 storage buffers
//!   per kernel, no f16, no subgroups); when the adapter offers `SUBGROUP`, reductions use
//!   subgroup operations, and with `SHADER_F16` prefill matmuls stage weights in f16
//!   workgroup memory (only formats f16 holds exactly). Sums are f32 on every path.

mod device;
pub(crate) mod shaders;
mod weights;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

pub use device::{GpuOptions, GpuStats};
pub use weights::GpuWeight;

use super::{Activation, AttentionShape, Backend, Grid, RopeShape};
use crate::backend::cpu::scalar;
use crate::error::Result;
use crate::model::config::RopeStyle;
use crate::tensor::HostTensor;
use device::{Bind, Ctx, Pool, SLOT};
use shaders::Kernel;

/// f32 activations `[rows, cols]` in a GPU buffer with room for `capacity` rows.
pub struct GpuTensor {
    buf: Option<wgpu::Buffer>,
    rows: usize,
    cols: usize,
    capacity: usize,
    pool: Arc<Mutex<Pool>>,
}

impl GpuTensor {
    fn buf(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("a live tensor has its buffer")
    }

    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).give(b);
        }
    }
}

/// The GPU backend; clones share the device.
#[derive(Clone)]
pub struct GpuBackend {
    ctx: Arc<Ctx>,
}

/// Workgroups for `n` independent units, spread over x and y (each ≤ 65535).
fn spread(n: usize) -> [u32; 3] {
    let n = n.max(1);
    let x = n.min(65535);
    [x as u32, n.div_ceil(x) as u32, 1]
}

/// Workgroups for `n` elements of 64-thread element-wise kernels.
fn spread64(n: usize) -> [u32; 3] {
    spread(n.div_ceil(64))
}

fn u(v: usize) -> u32 {
    u32::try_from(v).expect("GPU tensor sizes fit in 32 bits")
}

impl GpuBackend {
    /// Opens the default adapter. Fails with [`crate::Error::GpuUnavailable`] when there is
    /// none (or no device can be created on it).
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        Ok(GpuBackend {
            ctx: Arc::new(Ctx::new(opts)?),
        })
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.ctx.info
    }

    /// Whether the subgroup and f16 shader variants are in use.
    pub fn uses_subgroups(&self) -> bool {
        self.ctx.variant.subgroups
    }

    pub fn uses_f16(&self) -> bool {
        self.ctx.variant.f16
    }

    pub fn stats(&self) -> GpuStats {
        self.ctx.lock().stats
    }

    /// Submits the recorded work without waiting for it.
    pub fn flush(&self) {
        let mut st = self.ctx.lock();
        self.ctx.flush(&mut st, None);
    }

    fn new_tensor(&self, st: &mut device::State, rows: usize, cols: usize) -> GpuTensor {
        let bytes = (rows * cols * 4) as u64;
        assert!(
            bytes <= self.ctx.max_binding,
            "a {rows}×{cols} activation exceeds the GPU's storage binding limit of {} bytes",
            self.ctx.max_binding
        );
        let buf = self.ctx.storage_buffer(st, bytes);
        let capacity = if cols == 0 {
            rows
        } else {
            buf.size() as usize / (cols * 4)
        };
        GpuTensor {
            buf: Some(buf),
            rows,
            cols,
            capacity,
            pool: self.ctx.pool.clone(),
        }
    }

    fn elementwise(&self, kernel: Kernel, params: &[u32], binds: &[Bind], n: usize) {
        let mut st = self.ctx.lock();
        self.ctx
            .dispatch(&mut st, kernel, params, &[], binds, spread64(n));
    }
}

impl Backend for GpuBackend {
    type Tensor = GpuTensor;
    type Weight = GpuWeight;

    fn name(&self) -> String {
        let i = &self.ctx.info;
        let mut extras = vec![];
        if self.ctx.variant.subgroups {
            extras.push("subgroups");
        }
        if self.ctx.variant.f16 {
            extras.push("f16");
        }
        let extras = if extras.is_empty() {
            "plain".to_string()
        } else {
            extras.join("+")
        };
        format!("gpu: {} ({:?}, {extras})", i.name, i.backend)
    }

    fn weight(&self, t: HostTensor) -> Result<GpuWeight> {
        weights::upload(&self.ctx, &t)
    }

    fn weight_bytes(&self, w: &GpuWeight) -> usize {
        w.bytes()
    }

    fn tensor(&self, rows: usize, cols: usize) -> GpuTensor {
        let mut st = self.ctx.lock();
        self.new_tensor(&mut st, rows, cols)
    }

    fn rows(&self, t: &GpuTensor) -> usize {
        t.rows
    }

    fn cols(&self, t: &GpuTensor) -> usize {
        t.cols
    }

    fn set_rows(&self, t: &mut GpuTensor, rows: usize) {
        assert!(
            rows <= t.capacity,
            "{rows} rows exceed capacity {}",
            t.capacity
        );
        t.rows = rows;
    }

    fn reserve_rows(&self, t: &mut GpuTensor, rows: usize) {
        if rows <= t.capacity {
            return;
        }
        // Geometric growth: the KV cache grows by one row per decode step.
        let fits = (self.ctx.max_binding as usize / (t.cols * 4).max(1)).max(rows);
        let want = rows.max(t.capacity * 2).max(16).min(fits);
        let mut st = self.ctx.lock();
        let mut bigger = self.new_tensor(&mut st, want, t.cols);
        let old = (t.capacity * t.cols * 4) as u64;
        self.ctx.copy(&mut st, t.buf(), 0, bigger.buf(), 0, old);
        std::mem::swap(&mut t.buf, &mut bigger.buf);
        t.capacity = bigger.capacity;
        drop(st);
        // The old, smaller buffer is freed rather than pooled: growth sizes rarely recur.
        if let Some(old) = bigger.buf.take() {
            self.ctx
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .discard(old);
        }
    }

    fn write(&self, t: &mut GpuTensor, data: &[f32]) {
        let rows = data.len().checked_div(t.cols).unwrap_or(0);
        self.reserve_rows(t, rows);
        t.rows = rows;
        let mut st = self.ctx.lock();
        self.ctx.upload(
            &mut st,
            t.buf(),
            0,
            bytemuck::cast_slice(&data[..rows * t.cols]),
        );
    }

    fn sync(&self) {
        let mut st = self.ctx.lock();
        self.ctx.wait(&mut st);
    }

    fn read(&self, t: &GpuTensor) -> Vec<f32> {
        let mut st = self.ctx.lock();
        if t.len() == 0 {
            self.ctx.flush(&mut st, None);
            return vec![];
        }
        let bytes = self
            .ctx
            .flush(&mut st, Some((t.buf(), 0, (t.len() * 4) as u64)));
        bytemuck::pod_collect_to_vec(&bytes)
    }

    fn copy_rows(
        &self,
        src: &GpuTensor,
        src_row: usize,
        count: usize,
        dst: &mut GpuTensor,
        dst_row: usize,
    ) {
        assert_eq!(src.cols, dst.cols);
        assert!(src_row + count <= src.rows && dst_row + count <= dst.rows);
        let c = (src.cols * 4) as u64;
        let mut st = self.ctx.lock();
        self.ctx.copy(
            &mut st,
            src.buf(),
            src_row as u64 * c,
            dst.buf(),
            dst_row as u64 * c,
            count as u64 * c,
        );
    }

    fn embed(&self, table: &GpuWeight, ids: &[u32], out: &mut GpuTensor, row0: usize) {
        assert!(row0 + ids.len() <= out.rows);
        assert_eq!(table.cols, out.cols);
        let batch = (device::ARENA_DATA_BYTES / 4) as usize;
        let mut st = self.ctx.lock();
        for (b, chunk) in ids.chunks(batch).enumerate() {
            for part in &table.parts {
                let params = [
                    u(chunk.len()),
                    u(table.cols),
                    u(table.kb),
                    u(row0 + b * batch),
                    u(part.row0),
                    u(part.rows),
                    part.w_stride,
                    part.w_soff,
                ];
                let groups = [u(table.cols.div_ceil(4).div_ceil(64)), u(chunk.len()), 1];
                self.ctx.dispatch(
                    &mut st,
                    Kernel::Embed(table.dtype),
                    &params,
                    chunk,
                    &[
                        Bind::Buffer(&part.buf),
                        Bind::ArenaData,
                        Bind::Buffer(out.buf()),
                    ],
                    groups,
                );
            }
        }
    }

    fn rms_norm(&self, x: &GpuTensor, weight: &GpuWeight, eps: f32, out: &mut GpuTensor) {
        self.set_rows(out, x.rows);
        let mut st = self.ctx.lock();
        self.ctx.dispatch(
            &mut st,
            Kernel::RmsNorm,
            &[u(x.rows), u(x.cols), eps.to_bits()],
            &[],
            &[
                Bind::Buffer(x.buf()),
                Bind::Buffer(weight.vector_buffer()),
                Bind::Buffer(out.buf()),
            ],
            spread(x.rows),
        );
    }

    fn layer_norm(
        &self,
        x: &GpuTensor,
        weight: &GpuWeight,
        bias: &GpuWeight,
        eps: f32,
        out: &mut GpuTensor,
    ) {
        self.set_rows(out, x.rows);
        let mut st = self.ctx.lock();
        self.ctx.dispatch(
            &mut st,
            Kernel::LayerNorm,
            &[u(x.rows), u(x.cols), eps.to_bits()],
            &[],
            &[
                Bind::Buffer(x.buf()),
                Bind::Buffer(weight.vector_buffer()),
                Bind::Buffer(bias.vector_buffer()),
                Bind::Buffer(out.buf()),
            ],
            spread(x.rows),
        );
    }

    fn matmul(&self, x: &GpuTensor, w: &GpuWeight, bias: Option<&GpuWeight>, out: &mut GpuTensor) {
        assert!(!w.vector, "matmul needs a matrix weight");
        assert_eq!(
            x.cols, w.cols,
            "matmul: activation width {} vs weight {}×{}",
            x.cols, w.rows, w.cols
        );
        assert_eq!(out.cols, w.rows);
        self.set_rows(out, x.rows);
        let t = x.rows;
        let mut st = self.ctx.lock();
        let dummy = st.dummy.clone();
        let bias_buf = bias.map_or(&dummy, |b| b.vector_buffer());
        for part in &w.parts {
            let params = [
                u(part.rows),
                u(w.cols),
                u(w.kb),
                u(t),
                u(w.rows),
                u(part.row0),
                u32::from(bias.is_some()),
                part.w_stride,
                part.w_soff,
            ];
            let (kernel, groups) = if t <= shaders::MATVEC_MAX_ROWS {
                let max_t = if t == 1 {
                    1
                } else {
                    shaders::MATVEC_MAX_ROWS as u32
                };
                let kernel = Kernel::Matvec {
                    dtype: w.dtype,
                    max_t,
                };
                (kernel, spread(part.rows.div_ceil(4)))
            } else if self.ctx.variant.f16 && shaders::f16_tile_ok(w.dtype) {
                (
                    Kernel::MatmulTiledF16(w.dtype),
                    [u(part.rows.div_ceil(128)), u(t.div_ceil(32)), 1],
                )
            } else {
                (
                    Kernel::MatmulTiled(w.dtype),
                    [u(part.rows.div_ceil(64)), u(t.div_ceil(32)), 1],
                )
            };
            self.ctx.dispatch(
                &mut st,
                kernel,
                &params,
                &[],
                &[
                    Bind::Buffer(&part.buf),
                    Bind::Buffer(x.buf()),
                    Bind::Buffer(bias_buf),
                    Bind::Buffer(out.buf()),
                ],
                groups,
            );
        }
    }

    fn rope(
        &self,
        x: &mut GpuTensor,
        cos: &GpuTensor,
        sin: &GpuTensor,
        shape: RopeShape,
        pos0: usize,
    ) {
        let half = shape.rotary_dim / 2;
        assert_eq!(x.cols, shape.n_heads * shape.head_dim);
        assert!(pos0 + x.rows <= cos.rows, "RoPE table too short");
        let params = [
            u(x.rows),
            u(shape.n_heads),
            u(shape.head_dim),
            u(half),
            u32::from(shape.style == RopeStyle::Interleaved),
            u(pos0),
        ];
        self.elementwise(
            Kernel::Rope,
            &params,
            &[
                Bind::Buffer(x.buf()),
                Bind::Buffer(cos.buf()),
                Bind::Buffer(sin.buf()),
            ],
            x.rows * shape.n_heads * half,
        );
    }

    fn store_kv(&self, src: &GpuTensor, cache: &mut GpuTensor, pos0: usize) {
        assert_eq!(src.cols, cache.cols);
        let end = pos0 + src.rows;
        assert!(
            end <= cache.capacity,
            "KV cache overflow: {end} > {}",
            cache.capacity
        );
        // Rows past the new end belong to an abandoned continuation.
        cache.rows = end;
        let c = (src.cols * 4) as u64;
        let mut st = self.ctx.lock();
        self.ctx.copy(
            &mut st,
            src.buf(),
            0,
            cache.buf(),
            pos0 as u64 * c,
            src.rows as u64 * c,
        );
    }

    fn attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        shape: AttentionShape,
        pos0: usize,
        out: &mut GpuTensor,
    ) {
        let hd = shape.head_dim;
        assert!(
            hd <= shaders::MAX_HEAD_DIM,
            "head_dim {hd} is larger than the GPU attention kernels take ({})",
            shaders::MAX_HEAD_DIM
        );
        assert_eq!(q.cols, shape.n_heads * hd);
        assert_eq!(k.cols, shape.n_kv_heads * hd);
        self.set_rows(out, q.rows);
        let t = q.rows;
        let n_keys = k.rows;
        let params = [
            u(t),
            u(shape.n_heads),
            u(shape.n_kv_heads),
            u(hd),
            shape.scale.to_bits(),
            u32::from(shape.causal),
            u(shape.window.unwrap_or(0)),
            u(pos0),
            u(n_keys),
        ];
        let mut st = self.ctx.lock();
        if t <= shaders::ATTN_DECODE_MAX_ROWS {
            let longest = (0..t)
                .map(|r| scalar::visible_keys(shape, pos0, r, n_keys).len())
                .max()
                .unwrap_or(0);
            let n_chunks = longest.div_ceil(shaders::ATTN_CHUNK).max(1);
            let part_bytes = (t * shape.n_heads * n_chunks * (hd + 2) * 4) as u64;
            if part_bytes > st.attn_part.size() {
                st.attn_part = self
                    .ctx
                    .storage_buffer(&mut st, part_bytes.next_power_of_two());
            }
            let part = st.attn_part.clone();
            let mut p = params.to_vec();
            p.push(u(n_chunks));
            self.ctx.dispatch(
                &mut st,
                Kernel::AttnSplit,
                &p,
                &[],
                &[
                    Bind::Buffer(q.buf()),
                    Bind::Buffer(k.buf()),
                    Bind::Buffer(v.buf()),
                    Bind::Buffer(&part),
                ],
                spread(t * shape.n_heads * n_chunks),
            );
            self.ctx.dispatch(
                &mut st,
                Kernel::AttnCombine,
                &p,
                &[],
                &[Bind::Buffer(&part), Bind::Buffer(out.buf())],
                spread(t * shape.n_heads),
            );
        } else {
            let kernel = Kernel::AttnPrefill {
                hd: shaders::prefill_hd(hd),
            };
            self.ctx.dispatch(
                &mut st,
                kernel,
                &params,
                &[],
                &[
                    Bind::Buffer(q.buf()),
                    Bind::Buffer(k.buf()),
                    Bind::Buffer(v.buf()),
                    Bind::Buffer(out.buf()),
                ],
                [
                    u(t.div_ceil(shaders::ATTN_PREFILL_ROWS)),
                    u(shape.n_heads),
                    1,
                ],
            );
        }
    }

    fn activate(&self, x: &mut GpuTensor, act: Activation) {
        self.elementwise(
            Kernel::Activate,
            &[u(x.len()), act_code(act)],
            &[Bind::Buffer(x.buf())],
            x.len(),
        );
    }

    fn gated(&self, gate: &GpuTensor, up: &GpuTensor, act: Activation, out: &mut GpuTensor) {
        assert_eq!((gate.rows, gate.cols), (up.rows, up.cols));
        assert_eq!(gate.cols, out.cols);
        self.set_rows(out, gate.rows);
        self.elementwise(
            Kernel::Gated,
            &[u(gate.len()), act_code(act)],
            &[
                Bind::Buffer(out.buf()),
                Bind::Buffer(gate.buf()),
                Bind::Buffer(up.buf()),
            ],
            gate.len(),
        );
    }

    fn add(&self, x: &mut GpuTensor, y: &GpuTensor) {
        assert_eq!((x.rows, x.cols), (y.rows, y.cols));
        self.elementwise(
            Kernel::Add,
            &[u(x.len()), u(x.cols)],
            &[Bind::Buffer(x.buf()), Bind::Buffer(y.buf())],
            x.len(),
        );
    }

    fn mul_channels(&self, x: &mut GpuTensor, scale: &GpuTensor) {
        assert_eq!(x.cols, scale.cols);
        self.elementwise(
            Kernel::MulChannels,
            &[u(x.len()), u(x.cols)],
            &[Bind::Buffer(x.buf()), Bind::Buffer(scale.buf())],
            x.len(),
        );
    }

    fn mean_rows(&self, x: &GpuTensor, out: &mut GpuTensor) {
        assert_eq!(x.cols, out.cols);
        self.set_rows(out, 1);
        let mut st = self.ctx.lock();
        self.ctx.dispatch(
            &mut st,
            Kernel::MeanRows,
            &[u(x.rows), u(x.cols)],
            &[],
            &[Bind::Buffer(x.buf()), Bind::Buffer(out.buf())],
            [u(x.cols.div_ceil(64)), 1, 1],
        );
    }

    fn depthwise_conv3x3(
        &self,
        x: &GpuTensor,
        grid: Grid,
        weight: &GpuWeight,
        bias: Option<&GpuWeight>,
        stride: usize,
        out: &mut GpuTensor,
    ) {
        assert_eq!(x.rows, grid.cells());
        assert!(!weight.vector && weight.dtype == crate::tensor::DType::F32);
        assert_eq!((weight.rows, weight.cols), (x.cols, 9));
        let (oh, ow) = (
            scalar::conv3x3_out(grid.h, stride),
            scalar::conv3x3_out(grid.w, stride),
        );
        self.set_rows(out, oh * ow);
        let mut st = self.ctx.lock();
        let dummy = st.dummy.clone();
        let bias_buf = bias.map_or(&dummy, |b| b.vector_buffer());
        let params = [
            u(grid.h),
            u(grid.w),
            u(oh),
            u(ow),
            u(x.cols),
            u(stride),
            u32::from(bias.is_some()),
            weight.parts[0].w_stride,
        ];
        self.ctx.dispatch(
            &mut st,
            Kernel::DepthwiseConv3x3,
            &params,
            &[],
            &[
                Bind::Buffer(x.buf()),
                Bind::Buffer(&weight.parts[0].buf),
                Bind::Buffer(bias_buf),
                Bind::Buffer(out.buf()),
            ],
            spread64(oh * ow * x.cols),
        );
    }

    fn adaptive_avg_pool(&self, x: &GpuTensor, grid: Grid, out_grid: Grid, out: &mut GpuTensor) {
        assert_eq!(x.rows, grid.cells());
        self.set_rows(out, out_grid.cells());
        let mut st = self.ctx.lock();
        self.ctx.dispatch(
            &mut st,
            Kernel::AdaptiveAvgPool,
            &[
                u(grid.h),
                u(grid.w),
                u(out_grid.h),
                u(out_grid.w),
                u(x.cols),
            ],
            &[],
            &[Bind::Buffer(x.buf()), Bind::Buffer(out.buf())],
            spread64(out_grid.cells() * x.cols),
        );
    }

    fn softmax(&self, x: &mut GpuTensor) {
        let mut st = self.ctx.lock();
        self.ctx.dispatch(
            &mut st,
            Kernel::Softmax,
            &[u(x.rows), u(x.cols)],
            &[],
            &[Bind::Buffer(x.buf())],
            spread(x.rows),
        );
    }

    fn argmax(&self, x: &GpuTensor) -> Vec<u32> {
        if x.rows == 0 {
            return vec![];
        }
        let mut st = self.ctx.lock();
        let bytes = (x.rows * 4) as u64;
        if bytes > st.argmax_out.size() {
            st.argmax_out = self
                .ctx
                .storage_buffer(&mut st, bytes.next_multiple_of(SLOT));
        }
        let result = st.argmax_out.clone();
        self.ctx.dispatch(
            &mut st,
            Kernel::Argmax,
            &[u(x.rows), u(x.cols)],
            &[],
            &[Bind::Buffer(x.buf()), Bind::Buffer(&result)],
            spread(x.rows),
        );
        let bytes = self.ctx.flush(&mut st, Some((&result, 0, bytes)));
        bytemuck::pod_collect_to_vec(&bytes)
    }
}

/// The activation's number in activation.wgsl.
fn act_code(act: Activation) -> u32 {
    match act {
        Activation::Silu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::QuickGelu => 3,
        Activation::Relu => 4,
        Activation::Hardswish => 5,
        Activation::Hardsigmoid => 6,
    }
}
