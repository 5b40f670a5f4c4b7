//! BlueLM-V's token downsampler and 2-layer MLP projector.
//!
//! The downsampler (VILA's `DownSampleBlock` idea) pads the tower's `side × side` token
//! grid with zero tokens at the bottom and right to a multiple of `factor`, then joins every
//! `factor × factor` neighbourhood into one token by concatenating its tokens along the
//! channels, top-left first and row by row: for factor 2 the token at (i, j) of the
//! `⌈side/2⌉²` output is `[x(2i, 2j), x(2i, 2j+1), x(2i+1, 2j), x(2i+1, 2j+1)]`, and output
//! tokens are in row-major order. SigLIP-so400m/384's 27×27 grid becomes 28×28, then 196
//! tokens of 4 × 1152 channels. (VILA's `flat_square` concatenates in the same channel
//! order but emits the tokens column-major; our format is row-major.)
//!
//! The projector then is `Linear(f²·C → H)`, exact GELU, `Linear(H → H)`; the checkpoint
//! holds it as `model.mm_projector.{1,3}.{weight,bias}` (an `nn.Sequential` whose module 0 is
//! the parameter-free downsampler, 2 the GELU).
//!
//! The concatenation is never built: the first Linear's weight `[H, f²·C]` is split at load
//! into f² column blocks `[H, C]` (stored as in the file, quantised like any matrix), and
//! `W·concat(x₀ … x₃) = Σₖ Wₖ·xₖ` runs as f² matmuls over gathered rows. Same arithmetic,
//! no new backend op; the padding tokens are the zero rows a new tensor starts with.

use super::WeightLoader;
use super::llm::Linear;
use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor, Storage};

/// Output tokens for a `side × side` grid.
pub fn output_side(side: usize, factor: usize) -> usize {
    side.div_ceil(factor)
}

/// For output token `(i, j)` and neighbour `k` (row-major within the neighbourhood): the
/// input token's index in the `side × side` grid, or `None` for a padding token.
pub fn source_token(side: usize, factor: usize, i: usize, j: usize, k: usize) -> Option<usize> {
    let (r, c) = (factor * i + k / factor, factor * j + k % factor);
    (r < side && c < side).then_some(r * side + c)
}

/// Columns `start..start + count` of a matrix, in its stored format when the columns are
/// whole blocks of it, else as f32.
pub fn slice_cols(t: &HostTensor, start: usize, count: usize) -> HostTensor {
    let (rows, cols) = t.rows_cols();
    let dt = t.dtype;
    let (Some(skip), Some(take), Some(row)) =
        (dt.bytes_for(start), dt.bytes_for(count), dt.bytes_for(cols))
    else {
        return slice_cols(&t.to_f32(), start, count);
    };
    let bytes = t.bytes();
    let mut out = Vec::with_capacity(rows * take);
    for r in 0..rows {
        let at = r * row + skip;
        out.extend_from_slice(&bytes[at..at + take]);
    }
    HostTensor::new(dt, vec![rows, count], Storage::from_bytes(&out))
}

pub struct DownsampleMlp<B: Backend> {
    factor: usize,
    in_dim: usize,
    /// The first Linear's weight as `factor²` column blocks `[out, in]`.
    fc1_parts: Vec<B::Weight>,
    fc1_bias: B::Weight,
    fc2: Linear<B>,
}

impl<B: Backend> DownsampleMlp<B> {
    /// Loads `1.*` and `3.*` under `w` (the `model.mm_projector` module).
    pub fn load(
        w: &WeightLoader<B>,
        factor: usize,
        in_dim: usize,
        out_dim: usize,
        quant: Option<DType>,
    ) -> Result<Self> {
        if factor == 0 {
            return Err(Error::InvalidArgument(
                "the downsample factor must be at least 1".into(),
            ));
        }
        let parts = factor * factor;
        let full = w.host("1.weight", &[out_dim, parts * in_dim])?;
        let fc1_parts = (0..parts)
            .map(|k| {
                let block = slice_cols(&full, k * in_dim, in_dim);
                w.backend.weight(crate::quant::convert_matrix(block, quant))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DownsampleMlp {
            factor,
            in_dim,
            fc1_parts,
            fc1_bias: w.get("1.bias", &[out_dim])?,
            fc2: Linear::load(&w.pp("3"), out_dim, out_dim, true)?,
        })
    }

    /// Projects `tiles` stacked token grids (`tiles × side²` rows of the tower's width) to
    /// `tiles × ⌈side/f⌉²` rows of `out_dim`.
    pub fn forward(
        &self,
        be: &B,
        x: &B::Tensor,
        side: usize,
        tiles: usize,
        out_dim: usize,
    ) -> Result<B::Tensor> {
        let f = self.factor;
        let n_in = side * side;
        if be.rows(x) != tiles * n_in || be.cols(x) != self.in_dim {
            return Err(Error::InvalidArgument(format!(
                "downsampler expects {tiles} grids of {side}×{side} tokens × {}, got {} × {}",
                self.in_dim,
                be.rows(x),
                be.cols(x)
            )));
        }
        let g = output_side(side, f);
        let n_out = g * g;
        let mut acc = be.tensor(tiles * n_out, out_dim);
        let mut tmp = be.tensor(tiles * n_out, out_dim);
        for (k, weight) in self.fc1_parts.iter().enumerate() {
            // A fresh (zeroed) tensor: rows of padding tokens stay zero.
            let mut part = be.tensor(tiles * n_out, self.in_dim);
            for t in 0..tiles {
                for i in 0..g {
                    for j in 0..g {
                        if let Some(src) = source_token(side, f, i, j, k) {
                            be.copy_rows(x, t * n_in + src, 1, &mut part, t * n_out + i * g + j);
                        }
                    }
                }
            }
            if k == 0 {
                be.matmul(&part, weight, Some(&self.fc1_bias), &mut acc);
            } else {
                be.matmul(&part, weight, None, &mut tmp);
                be.add(&mut acc, &tmp);
            }
        }
        be.activate(&mut acc, Activation::Gelu);
        let mut out = be.tensor(tiles * n_out, out_dim);
        self.fc2.forward(be, &acc, &mut out);
        Ok(out)
    }

    pub fn weight_bytes(&self, be: &B) -> usize {
        self.fc1_parts
            .iter()
            .map(|w| be.weight_bytes(w))
            .sum::<usize>()
            + be.weight_bytes(&self.fc1_bias)
            + self.fc2.bytes(be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_grid_is_padded_at_the_bottom_and_right() {
        // 3×3 → 2×2; the last output token sees one real token and three padding ones.
        assert_eq!(output_side(27, 2), 14);
        assert_eq!(source_token(3, 2, 0, 0, 0), Some(0));
        assert_eq!(source_token(3, 2, 0, 0, 1), Some(1));
        assert_eq!(source_token(3, 2, 0, 0, 2), Some(3));
        assert_eq!(source_token(3, 2, 0, 0, 3), Some(4));
        assert_eq!(source_token(3, 2, 1, 1, 0), Some(8));
        assert_eq!(source_token(3, 2, 1, 1, 1), None);
        assert_eq!(source_token(3, 2, 1, 1, 2), None);
    }

    #[test]
    fn column_blocks_keep_the_stored_format() {
        let data: Vec<f32> = (0..2 * 64).map(|v| v as f32).collect();
        let t = HostTensor::from_f32(vec![2, 64], &data);
        let q = crate::quant::convert_matrix(t, Some(DType::Q8_0));
        let s = slice_cols(&q, 32, 32);
        assert_eq!(s.dtype, DType::Q8_0);
        assert_eq!(s.shape, vec![2, 32]);
        let v = s.to_f32_vec();
        assert!(
            (v[0] - 32.0).abs() < 0.5 && (v[32] - 96.0).abs() < 0.5,
            "{v:?}"
        );
        // Not whole blocks: f32.
        assert_eq!(slice_cols(&q, 16, 16).dtype, DType::F32);
    }
}
