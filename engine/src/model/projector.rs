//! Projectors from vision features to language-model embeddings, with the state-dict
//! names of the MobileVLM and Imp/LLaVA repositories (under `model.mm_projector`).
//!
//! - `linear`: `weight`, `bias`.
//! - `mlp2x_gelu` (Imp): `0.*` Linear → exact GELU → `2.*` Linear.
//! - `ldpnet` (MobileVLM v1): `model.mlp.{1,3}` Linear–GELU–Linear, then two torchvision
//!   MobileNetV3 inverted-residual blocks `model.mb_block.{1,2}.block.*` without expansion:
//!   depthwise 3×3 (no bias) → LayerNorm → hardswish → squeeze-excitation (mean, fc1, ReLU,
//!   fc2, hardsigmoid, scale) → pointwise 1×1 (no bias) → LayerNorm; block 1 has stride 1
//!   and a residual, block 2 stride 2 and none.
//! - `ldpnetv2` (MobileVLM V2): `mlp.mlp.{0,2}` Linear–GELU–Linear, 2×2 average pooling
//!   (`AdaptiveAvgPool2d((12, 12))`), then `peg.peg.0` depthwise 3×3 with bias plus a
//!   residual.

use super::WeightLoader;
use super::config::ProjectorKind;
use super::downsample::DownsampleMlp;
use super::llm::Linear;
use crate::backend::{Activation, Backend, Grid};
use crate::error::{Error, Result};

/// timm's `LayerNormAct2d` default.
const LDP_NORM_EPS: f32 = 1e-5;

/// One MobileNetV3 inverted-residual block of the LDP projector.
pub struct InvertedResidual<B: Backend> {
    depthwise: B::Weight,
    norm1: (B::Weight, B::Weight),
    se_fc1: Linear<B>,
    se_fc2: Linear<B>,
    pointwise: B::Weight,
    norm2: (B::Weight, B::Weight),
    stride: usize,
    /// Width of the squeeze-excitation bottleneck.
    squeeze: usize,
}

/// torchvision's `_make_divisible(v, 8)`: the squeeze width of the SE layer.
pub fn make_divisible(v: usize, divisor: usize) -> usize {
    let rounded = ((v + divisor / 2) / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * v as f64 {
        rounded + divisor
    } else {
        rounded
    }
}

impl<B: Backend> InvertedResidual<B> {
    fn load(w: &WeightLoader<B>, c: usize, stride: usize) -> Result<Self> {
        let s = make_divisible(c / 4, 8);
        let conv1x1 = |name: &str, out_c: usize, in_c: usize, bias: bool| -> Result<Linear<B>> {
            // A 1×1 convolution is a linear layer over channels.
            Ok(Linear {
                weight: w.matrix(&format!("{name}.weight"), &[out_c, in_c])?,
                bias: if bias {
                    Some(w.get(&format!("{name}.bias"), &[out_c])?)
                } else {
                    None
                },
            })
        };
        Ok(InvertedResidual {
            depthwise: w.get_f32("block.0.0.weight", &[c, 1, 3, 3], &[c, 9])?,
            norm1: (
                w.get("block.0.1.weight", &[c])?,
                w.get("block.0.1.bias", &[c])?,
            ),
            se_fc1: conv1x1("block.1.fc1", s, c, true)?,
            se_fc2: conv1x1("block.1.fc2", c, s, true)?,
            pointwise: conv1x1("block.2.0", c, c, false)?.weight,
            norm2: (
                w.get("block.2.1.weight", &[c])?,
                w.get("block.2.1.bias", &[c])?,
            ),
            stride,
            squeeze: s,
        })
    }

    fn forward(&self, be: &B, x: &B::Tensor, grid: Grid) -> (B::Tensor, Grid) {
        let c = be.cols(x);
        let out_grid = Grid {
            h: (grid.h + 2 - 3) / self.stride + 1,
            w: (grid.w + 2 - 3) / self.stride + 1,
        };
        let n = out_grid.cells();
        let mut y = be.tensor(n, c);
        be.depthwise_conv3x3(x, grid, &self.depthwise, None, self.stride, &mut y);
        let mut normed = be.tensor(n, c);
        be.layer_norm(&y, &self.norm1.0, &self.norm1.1, LDP_NORM_EPS, &mut normed);
        be.activate(&mut normed, Activation::Hardswish);

        // Squeeze-excitation: a per-channel gate from the global average.
        let mut pooled = be.tensor(1, c);
        be.mean_rows(&normed, &mut pooled);
        let mut squeezed = be.tensor(1, self.squeeze);
        self.se_fc1.forward(be, &pooled, &mut squeezed);
        be.activate(&mut squeezed, Activation::Relu);
        let mut gate = be.tensor(1, c);
        self.se_fc2.forward(be, &squeezed, &mut gate);
        be.activate(&mut gate, Activation::Hardsigmoid);
        be.mul_channels(&mut normed, &gate);

        be.matmul(&normed, &self.pointwise, None, &mut y);
        let mut out = be.tensor(n, c);
        be.layer_norm(&y, &self.norm2.0, &self.norm2.1, LDP_NORM_EPS, &mut out);
        if self.stride == 1 {
            be.add(&mut out, x);
        }
        (out, out_grid)
    }
}

pub enum Projector<B: Backend> {
    Linear(Linear<B>),
    Mlp {
        fc1: Linear<B>,
        fc2: Linear<B>,
    },
    Ldp {
        fc1: Linear<B>,
        fc2: Linear<B>,
        blocks: Vec<InvertedResidual<B>>,
    },
    Ldpv2 {
        fc1: Linear<B>,
        fc2: Linear<B>,
        peg_weight: B::Weight,
        peg_bias: B::Weight,
    },
    /// BlueLM-V: token downsampler + MLP (`model/downsample.rs`).
    DownsampleMlp(DownsampleMlp<B>),
}

impl<B: Backend> Projector<B> {
    /// Loads the projector under `w` (the `model.mm_projector` module).
    pub fn load(
        w: &WeightLoader<B>,
        kind: ProjectorKind,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let (i, o) = (in_dim, out_dim);
        Ok(match kind {
            ProjectorKind::Linear => Projector::Linear(Linear::load(w, o, i, true)?),
            ProjectorKind::Mlp2xGelu => Projector::Mlp {
                fc1: Linear::load(&w.pp("0"), o, i, true)?,
                fc2: Linear::load(&w.pp("2"), o, o, true)?,
            },
            ProjectorKind::Ldp => {
                let m = w.pp("model");
                Projector::Ldp {
                    fc1: Linear::load(&m.pp("mlp.1"), o, i, true)?,
                    fc2: Linear::load(&m.pp("mlp.3"), o, o, true)?,
                    blocks: vec![
                        InvertedResidual::load(&m.pp("mb_block.1"), o, 1)?,
                        InvertedResidual::load(&m.pp("mb_block.2"), o, 2)?,
                    ],
                }
            }
            ProjectorKind::Ldpv2 => Projector::Ldpv2 {
                fc1: Linear::load(&w.pp("mlp.mlp.0"), o, i, true)?,
                fc2: Linear::load(&w.pp("mlp.mlp.2"), o, o, true)?,
                peg_weight: w.get_f32("peg.peg.0.weight", &[o, 1, 3, 3], &[o, 9])?,
                peg_bias: w.get("peg.peg.0.bias", &[o])?,
            },
            ProjectorKind::DownsampleMlp { factor } => {
                Projector::DownsampleMlp(DownsampleMlp::load(w, factor, i, o, w.quant())?)
            }
        })
    }

    /// Projects `tiles` stacked `side × side` grids (`tiles × side²` rows): token-wise
    /// projectors take them in one pass, grid-wise ones (LDP, LDPv2) one grid at a time.
    pub fn forward_tiles(
        &self,
        be: &B,
        x: &B::Tensor,
        side: usize,
        tiles: usize,
        out_dim: usize,
    ) -> Result<B::Tensor> {
        let n = side * side;
        if be.rows(x) != tiles * n {
            return Err(Error::InvalidArgument(format!(
                "projector expects {tiles} grids of {side}×{side}, got {} tokens",
                be.rows(x)
            )));
        }
        match self {
            Projector::DownsampleMlp(d) => d.forward(be, x, side, tiles, out_dim),
            // Token-wise: a stack of grids is just more rows.
            Projector::Linear(l) => {
                let mut out = be.tensor(be.rows(x), out_dim);
                l.forward(be, x, &mut out);
                Ok(out)
            }
            Projector::Mlp { fc1, fc2 } => Ok(Self::mlp(be, fc1, fc2, x, out_dim)),
            _ if tiles == 1 => self.forward(be, x, side, out_dim),
            _ => {
                let mut grid = be.tensor(n, be.cols(x));
                let mut parts = Vec::with_capacity(tiles);
                for t in 0..tiles {
                    be.copy_rows(x, t * n, n, &mut grid, 0);
                    parts.push(self.forward(be, &grid, side, out_dim)?);
                }
                let per = be.rows(&parts[0]);
                let mut out = be.tensor(tiles * per, out_dim);
                for (t, p) in parts.iter().enumerate() {
                    be.copy_rows(p, 0, per, &mut out, t * per);
                }
                Ok(out)
            }
        }
    }

    pub fn weight_bytes(&self, be: &B) -> usize {
        let lin = |l: &Linear<B>| l.bytes(be);
        match self {
            Projector::Linear(l) => lin(l),
            Projector::Mlp { fc1, fc2 } | Projector::Ldp { fc1, fc2, .. } => lin(fc1) + lin(fc2),
            Projector::Ldpv2 { fc1, fc2, .. } => lin(fc1) + lin(fc2),
            Projector::DownsampleMlp(d) => d.weight_bytes(be),
        }
    }

    fn mlp(be: &B, fc1: &Linear<B>, fc2: &Linear<B>, x: &B::Tensor, out_dim: usize) -> B::Tensor {
        let n = be.rows(x);
        let mut hidden = be.tensor(n, out_dim);
        fc1.forward(be, x, &mut hidden);
        be.activate(&mut hidden, Activation::Gelu);
        let mut out = be.tensor(n, out_dim);
        fc2.forward(be, &hidden, &mut out);
        out
    }

    /// Projects vision features laid out as a `side × side` grid (row-major).
    pub fn forward(&self, be: &B, x: &B::Tensor, side: usize, out_dim: usize) -> Result<B::Tensor> {
        if be.rows(x) != side * side {
            return Err(Error::InvalidArgument(format!(
                "projector expects a {side}×{side} grid, got {} tokens",
                be.rows(x)
            )));
        }
        let grid = Grid::square(side);
        Ok(match self {
            Projector::Linear(l) => {
                let mut out = be.tensor(be.rows(x), out_dim);
                l.forward(be, x, &mut out);
                out
            }
            Projector::Mlp { fc1, fc2 } => Self::mlp(be, fc1, fc2, x, out_dim),
            Projector::Ldp { fc1, fc2, blocks } => {
                let mut y = Self::mlp(be, fc1, fc2, x, out_dim);
                let mut g = grid;
                for block in blocks {
                    let (next, next_grid) = block.forward(be, &y, g);
                    y = next;
                    g = next_grid;
                }
                y
            }
            Projector::Ldpv2 {
                fc1,
                fc2,
                peg_weight,
                peg_bias,
            } => {
                let y = Self::mlp(be, fc1, fc2, x, out_dim);
                let pooled_grid = Grid::square(12);
                let mut pooled = be.tensor(pooled_grid.cells(), out_dim);
                be.adaptive_avg_pool(&y, grid, pooled_grid, &mut pooled);
                let mut out = be.tensor(pooled_grid.cells(), out_dim);
                be.depthwise_conv3x3(
                    &pooled,
                    pooled_grid,
                    peg_weight,
                    Some(peg_bias),
                    1,
                    &mut out,
                );
                be.add(&mut out, &pooled);
                out
            }
            Projector::DownsampleMlp(d) => d.forward(be, x, side, 1, out_dim)?,
        })
    }
}
