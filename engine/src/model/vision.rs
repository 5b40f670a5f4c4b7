//! Vision transformers: OpenAI CLIP and Google SigLIP, as transformers' `CLIPVisionModel`
//! and `SiglipVisionModel` compute them.
//!
//! Both families read features from an intermediate layer (`hidden_states[select_layer]`,
//! before any post-LayerNorm), so only the layers up to it are loaded and run.

use super::WeightLoader;
use super::config::{VisionConfig, VisionKind};
use super::llm::Linear;
use crate::backend::{AttentionShape, Backend};
use crate::error::{Error, Result};

struct VitLayer<B: Backend> {
    ln1: (B::Weight, B::Weight),
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    ln2: (B::Weight, B::Weight),
    fc1: Linear<B>,
    fc2: Linear<B>,
}

pub struct VisionTower<B: Backend> {
    be: B,
    cfg: VisionConfig,
    /// `[hidden, 3 · patch²]`: the patch convolution as a matrix over flattened patches.
    patch_weight: B::Weight,
    patch_bias: Option<B::Weight>,
    class_embedding: Option<B::Tensor>,
    position_embedding: B::Tensor,
    pre_norm: Option<(B::Weight, B::Weight)>,
    layers: Vec<VitLayer<B>>,
    drop_cls: bool,
}

fn layer_norm<B: Backend>(w: &WeightLoader<B>, dim: usize) -> Result<(B::Weight, B::Weight)> {
    Ok((w.get("weight", &[dim])?, w.get("bias", &[dim])?))
}

impl<B: Backend> VisionTower<B> {
    /// Loads the first `layers_to_run` encoder layers of the tower whose `vision_model`
    /// module `w` points at. `drop_cls` removes CLIP's class token from the output.
    pub fn load(
        be: B,
        cfg: VisionConfig,
        w: &WeightLoader<B>,
        layers_to_run: usize,
        drop_cls: bool,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let e = w.pp("embeddings");
        let patch_in = 3 * p * p;
        // Kept as stored: quantising the patch embedding costs accuracy for no memory.
        let patch = e.host("patch_embedding.weight", &[h, 3, p, p])?;
        let patch_weight = be.weight(patch.reshape(vec![h, patch_in]))?;
        let is_clip = cfg.kind == VisionKind::Clip;
        let patch_bias = if is_clip {
            None
        } else {
            Some(e.get("patch_embedding.bias", &[h])?)
        };
        let upload = |data: Vec<f32>, rows: usize| {
            let mut t = be.tensor(rows, h);
            be.write(&mut t, &data);
            t
        };
        let class_embedding = if is_clip {
            Some(upload(e.host_f32("class_embedding", &[h])?, 1))
        } else {
            None
        };
        let n_pos = cfg.num_positions();
        let position_embedding =
            upload(e.host_f32("position_embedding.weight", &[n_pos, h])?, n_pos);
        let pre_norm = if is_clip {
            Some(layer_norm(&w.pp("pre_layrnorm"), h)?)
        } else {
            None
        };
        if layers_to_run > cfg.num_layers {
            return Err(Error::InvalidArgument(format!(
                "vision feature layer {layers_to_run} is past the tower's {} layers",
                cfg.num_layers
            )));
        }
        let inter = cfg.intermediate_size;
        let layers = (0..layers_to_run)
            .map(|i| {
                let l = w.pp(format!("encoder.layers.{i}"));
                let a = l.pp("self_attn");
                Ok(VitLayer {
                    ln1: layer_norm(&l.pp("layer_norm1"), h)?,
                    q: Linear::load(&a.pp("q_proj"), h, h, true)?,
                    k: Linear::load(&a.pp("k_proj"), h, h, true)?,
                    v: Linear::load(&a.pp("v_proj"), h, h, true)?,
                    out: Linear::load(&a.pp("out_proj"), h, h, true)?,
                    ln2: layer_norm(&l.pp("layer_norm2"), h)?,
                    fc1: Linear::load(&l.pp("mlp.fc1"), inter, h, true)?,
                    fc2: Linear::load(&l.pp("mlp.fc2"), h, inter, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionTower {
            be,
            cfg,
            patch_weight,
            patch_bias,
            class_embedding,
            position_embedding,
            pre_norm,
            layers,
            drop_cls: drop_cls && is_clip,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Rows of the output: the patches (plus the class token unless dropped).
    pub fn output_tokens(&self) -> usize {
        self.cfg.num_positions() - usize::from(self.drop_cls)
    }

    /// The flattened patches `[num_patches, 3 · patch²]` of CHW pixels, in the (c, y, x)
    /// order of the conv kernel, patches row-major over the grid.
    fn patches(&self, pixels: &[f32]) -> Vec<f32> {
        let (p, side) = (self.cfg.patch_size, self.cfg.image_size);
        let g = self.cfg.grid_side();
        let mut out = Vec::with_capacity(g * g * 3 * p * p);
        for gy in 0..g {
            for gx in 0..g {
                for c in 0..3 {
                    for ky in 0..p {
                        let row = &pixels[c * side * side + (gy * p + ky) * side + gx * p..];
                        out.extend_from_slice(&row[..p]);
                    }
                }
            }
        }
        out
    }

    /// Runs the tower on CHW pixels (`3 × image_size²` values, already normalised) and
    /// returns the selected layer's hidden states.
    pub fn forward(&self, pixels: &[f32]) -> Result<B::Tensor> {
        self.forward_batch(&[pixels])
    }

    /// Runs the tower on a batch of images (tiles) at once and returns their selected
    /// layer's hidden states stacked, [`Self::output_tokens`] rows per image. The matmuls
    /// see every image's rows together (one weight pass for the batch); attention stays
    /// within each image.
    pub fn forward_batch(&self, images: &[&[f32]]) -> Result<B::Tensor> {
        let cfg = &self.cfg;
        let side = cfg.image_size;
        let b = images.len();
        if b == 0 {
            return Err(Error::InvalidArgument("no images to encode".into()));
        }
        for pixels in images {
            if pixels.len() != 3 * side * side {
                return Err(Error::InvalidArgument(format!(
                    "the vision tower takes 3×{side}×{side} pixels, got {} values",
                    pixels.len()
                )));
            }
        }
        let be = &self.be;
        let h = cfg.hidden_size;
        let n_patch = cfg.num_patches();
        let n = cfg.num_positions();
        let inter = cfg.intermediate_size;
        let rows = b * n;

        let mut patches = be.tensor(b * n_patch, 3 * cfg.patch_size * cfg.patch_size);
        let mut flat = Vec::with_capacity(b * n_patch * 3 * cfg.patch_size * cfg.patch_size);
        for pixels in images {
            flat.extend(self.patches(pixels));
        }
        be.write(&mut patches, &flat);
        let mut embedded = be.tensor(b * n_patch, h);
        be.matmul(
            &patches,
            &self.patch_weight,
            self.patch_bias.as_ref(),
            &mut embedded,
        );
        let mut x = be.tensor(rows, h);
        let mut pos = be.tensor(rows, h);
        for t in 0..b {
            let first_patch = match &self.class_embedding {
                Some(cls) => {
                    be.copy_rows(cls, 0, 1, &mut x, t * n);
                    1
                }
                None => 0,
            };
            be.copy_rows(&embedded, t * n_patch, n_patch, &mut x, t * n + first_patch);
            be.copy_rows(&self.position_embedding, 0, n, &mut pos, t * n);
        }
        be.add(&mut x, &pos);
        drop(pos);
        let mut normed = be.tensor(rows, h);
        if let Some((w, bias)) = &self.pre_norm {
            be.layer_norm(&x, w, bias, cfg.norm_eps, &mut normed);
            std::mem::swap(&mut x, &mut normed);
        }

        let shape = AttentionShape {
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
            scale: 1.0 / (cfg.head_dim() as f32).sqrt(),
            causal: false,
            window: None,
        };
        let (mut q, mut k, mut v) = (be.tensor(rows, h), be.tensor(rows, h), be.tensor(rows, h));
        let (mut attn, mut proj) = (be.tensor(rows, h), be.tensor(rows, h));
        let mut hidden = be.tensor(rows, inter);
        // Per-image views for attention when the batch holds several images.
        let mut one = (b > 1).then(|| {
            (
                be.tensor(n, h),
                be.tensor(n, h),
                be.tensor(n, h),
                be.tensor(n, h),
            )
        });
        for l in &self.layers {
            be.layer_norm(&x, &l.ln1.0, &l.ln1.1, cfg.norm_eps, &mut normed);
            l.q.forward(be, &normed, &mut q);
            l.k.forward(be, &normed, &mut k);
            l.v.forward(be, &normed, &mut v);
            match &mut one {
                None => be.attention(&q, &k, &v, shape, 0, &mut attn),
                Some((qi, ki, vi, oi)) => {
                    for t in 0..b {
                        be.copy_rows(&q, t * n, n, qi, 0);
                        be.copy_rows(&k, t * n, n, ki, 0);
                        be.copy_rows(&v, t * n, n, vi, 0);
                        be.attention(qi, ki, vi, shape, 0, oi);
                        be.copy_rows(oi, 0, n, &mut attn, t * n);
                    }
                }
            }
            l.out.forward(be, &attn, &mut proj);
            be.add(&mut x, &proj);

            be.layer_norm(&x, &l.ln2.0, &l.ln2.1, cfg.norm_eps, &mut normed);
            l.fc1.forward(be, &normed, &mut hidden);
            be.activate(&mut hidden, cfg.activation);
            l.fc2.forward(be, &hidden, &mut proj);
            be.add(&mut x, &proj);
        }
        if self.drop_cls {
            let mut out = be.tensor(b * (n - 1), h);
            for t in 0..b {
                be.copy_rows(&x, t * n + 1, n - 1, &mut out, t * (n - 1));
            }
            return Ok(out);
        }
        Ok(x)
    }

    pub fn weight_bytes(&self) -> usize {
        let be = &self.be;
        let mut n = be.weight_bytes(&self.patch_weight);
        n += self.patch_bias.as_ref().map_or(0, |b| be.weight_bytes(b));
        n += (self.cfg.num_positions() + 1) * self.cfg.hidden_size * 4;
        for l in &self.layers {
            for lin in [&l.q, &l.k, &l.v, &l.out, &l.fc1, &l.fc2] {
                n += lin.bytes(be);
            }
            n += 4 * self.cfg.hidden_size * 4;
        }
        n
    }
}
