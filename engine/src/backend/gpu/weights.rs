//! Weights on the GPU: uploaded once at load, in their stored format, split by rows over
//! as many buffers as the adapter's storage-binding limit requires.
//!
//! Layouts (per part, in 32-bit words, because WGSL reads storage only in words):
//! - f32 / f16 / bf16 matrices: rows padded with zeros to whole 32-element blocks, so every
//!   format has `kb = ceil(cols / 32)` blocks per row and kernels need no tail case on the
//!   weight side; f16/bf16 pack two values per word.
//! - Q4_0 / Q4_1 / Q8_0: every ggml block keeps its exact bits, regrouped into two aligned
//!   regions — all quant bytes first (blocks row-major), then the scales (two f16 per word;
//!   Q4_1: one word of d and m per block). An 18/20/34-byte block is not word-aligned, and
//!   WGSL has no 8- or 16-bit loads; llama.cpp's Adreno OpenCL backend splits Q4_0 the same
//!   way.
//! - 1-D weights (norms, biases): f32, converted once (every token reads all of them).

use super::device::Ctx;
use crate::error::{Error, Result};
use crate::quant::QK;
use crate::tensor::{DType, HostTensor};

/// Rows `row0..row0 + rows` of a matrix, in one buffer.
pub(crate) struct Part {
    pub buf: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
    /// Words per row (float formats).
    pub w_stride: u32,
    /// Word offset of the scale region (quantised formats).
    pub w_soff: u32,
}

/// A weight resident on the GPU.
pub struct GpuWeight {
    pub(crate) dtype: DType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// 32-element blocks per row.
    pub(crate) kb: usize,
    /// 1-D f32 (norm weights, biases) rather than a matrix.
    pub(crate) vector: bool,
    pub(crate) parts: Vec<Part>,
}

impl GpuWeight {
    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.buf.size() as usize).sum()
    }

    /// The buffer of a 1-D weight.
    pub(crate) fn vector_buffer(&self) -> &wgpu::Buffer {
        assert!(
            self.vector,
            "expected a 1-D weight, got {}×{}",
            self.rows, self.cols
        );
        &self.parts[0].buf
    }
}

/// Bytes one row occupies in the GPU layout.
fn row_bytes(dtype: DType, kb: usize) -> usize {
    let kp = kb * QK;
    match dtype {
        DType::F32 => kp * 4,
        DType::F16 | DType::BF16 => kp * 2,
        q => kb * q.type_size(),
    }
}

/// The GPU layout of `rows` rows (`src` = their stored bytes): the words and the
/// (row stride, scale offset) the kernels need.
fn repack(dtype: DType, src: &[u8], rows: usize, cols: usize, kb: usize) -> (Vec<u8>, u32, u32) {
    let kp = kb * QK;
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let es = dtype.type_size();
            let mut out = vec![0u8; rows * kp * es];
            for (dst, s) in out
                .chunks_exact_mut(kp * es)
                .zip(src.chunks_exact(cols * es))
            {
                dst[..cols * es].copy_from_slice(s);
            }
            (out, (kp * es / 4) as u32, 0)
        }
        q => {
            let ts = q.type_size();
            let n_blocks = rows * kb;
            // (bytes of the scale header, bytes of quants) per block.
            let (head, quants) = match q {
                DType::Q4_0 => (2, 16),
                DType::Q4_1 => (4, 16),
                _ => (2, 32),
            };
            let mut qs = Vec::with_capacity(n_blocks * quants + n_blocks * head + 4);
            let mut scales = Vec::with_capacity(n_blocks * head + 2);
            for block in src.chunks_exact(ts).take(n_blocks) {
                qs.extend_from_slice(&block[head..]);
                scales.extend_from_slice(&block[..head]);
            }
            let soff = (qs.len() / 4) as u32;
            qs.extend_from_slice(&scales);
            qs.resize(qs.len().next_multiple_of(4), 0);
            (qs, 0, soff)
        }
    }
}

/// Uploads a host tensor: 1-D tensors as f32 vectors, everything else as a matrix
/// `[outer, last]` split into parts no larger than the device's binding limit.
pub(crate) fn upload(ctx: &Ctx, t: &HostTensor) -> Result<GpuWeight> {
    if t.shape.len() <= 1 {
        let values = t.to_f32_vec();
        let buf = ctx.weight_buffer(bytemuck::cast_slice(&values));
        return Ok(GpuWeight {
            dtype: DType::F32,
            rows: 1,
            cols: values.len(),
            kb: values.len().div_ceil(QK),
            vector: true,
            parts: vec![Part {
                buf,
                row0: 0,
                rows: 1,
                w_stride: 0,
                w_soff: 0,
            }],
        });
    }
    let (rows, cols) = t.rows_cols();
    let kb = cols.div_ceil(QK);
    let per_row = row_bytes(t.dtype, kb);
    // Headroom for the scale region's word padding.
    let rows_per_part =
        ((ctx.max_weight_part.saturating_sub(16)) as usize / per_row.max(1)).min(rows.max(1));
    if rows_per_part == 0 {
        return Err(Error::InvalidArgument(format!(
            "a row of {cols} {} values ({per_row} bytes) exceeds the GPU's {}-byte storage binding limit",
            t.dtype, ctx.max_weight_part
        )));
    }
    let src_row = t.row_bytes();
    let bytes = t.bytes();
    let mut parts = vec![];
    let mut row0 = 0;
    while row0 < rows || parts.is_empty() {
        let n = rows_per_part.min(rows - row0);
        let (data, w_stride, w_soff) = repack(
            t.dtype,
            &bytes[row0 * src_row..(row0 + n) * src_row],
            n,
            cols,
            kb,
        );
        parts.push(Part {
            buf: ctx.weight_buffer(&data),
            row0,
            rows: n,
            w_stride,
            w_soff,
        });
        row0 += n;
        if n == 0 {
            break;
        }
    }
    Ok(GpuWeight {
        dtype: t.dtype,
        rows,
        cols,
        kb,
        vector: false,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_blocks_keep_their_bits_in_two_regions() {
        // Two Q4_0 blocks: d = 0x1122 / 0x3344, quants 0..16 and 16..32.
        let mut src = vec![];
        for (d, base) in [(0x1122u16, 0u8), (0x3344, 16)] {
            src.extend_from_slice(&d.to_le_bytes());
            src.extend((0..16).map(|i| base + i));
        }
        let (out, _, soff) = repack(DType::Q4_0, &src, 1, 64, 2);
        assert_eq!(soff, 8);
        assert_eq!(&out[..32], &(0..32).collect::<Vec<u8>>()[..]);
        assert_eq!(&out[32..36], &[0x22, 0x11, 0x44, 0x33]);
    }

    #[test]
    fn float_rows_are_padded_to_whole_blocks() {
        let src: Vec<u8> = (1..=6u16).flat_map(|v| v.to_le_bytes()).collect();
        let (out, stride, _) = repack(DType::F16, &src, 2, 3, 1);
        assert_eq!(stride, 16);
        assert_eq!(out.len(), 2 * 64);
        assert_eq!(&out[..6], &src[..6]);
        assert!(out[6..64].iter().all(|&b| b == 0));
        assert_eq!(&out[64..70], &src[6..]);
    }
}
