//! Phi-2 (the LM of Imp-v1 and Imp-v1.5-3B): each block normalises once (LayerNorm with
//! bias) and feeds attention and the MLP in parallel, `x + attn(ln(x)) + mlp(ln(x))`.
//! Rotary embedding covers only the first `partial_rotary_factor × head_dim` dimensions;
//! every linear has a bias, the head too. Names follow transformers' `PhiForCausalLM`
//! (the layout Imp's current checkpoints use).

use super::{Decoder, KvCache, Linear, PREFILL_CHUNK, rope_tables};
use crate::backend::{AttentionShape, Backend, RopeShape};
use crate::error::Result;
use crate::model::WeightLoader;
use crate::model::config::LlmConfig;

struct Layer<B: Backend> {
    norm_weight: B::Weight,
    norm_bias: B::Weight,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    dense: Linear<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

struct Scratch<B: Backend> {
    normed: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    attn: B::Tensor,
    attn_out: B::Tensor,
    mlp_hidden: B::Tensor,
    mlp_out: B::Tensor,
    last: B::Tensor,
    logits: B::Tensor,
}

pub struct Phi2<B: Backend> {
    be: B,
    cfg: LlmConfig,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    final_norm_weight: B::Weight,
    final_norm_bias: B::Weight,
    lm_head: Linear<B>,
    rope_cos: B::Tensor,
    rope_sin: B::Tensor,
    cache: KvCache<B>,
    s: Scratch<B>,
}

impl<B: Backend> Phi2<B> {
    pub fn load(be: B, cfg: LlmConfig, w: &WeightLoader<B>, context_len: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        let q_dim = cfg.num_heads * cfg.head_dim;
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let inter = cfg.intermediate_size;
        let m = w.pp("model");
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            layers.push(Layer {
                norm_weight: l.get("input_layernorm.weight", &[h])?,
                norm_bias: l.get("input_layernorm.bias", &[h])?,
                q: Linear::load(&a.pp("q_proj"), q_dim, h, true)?,
                k: Linear::load(&a.pp("k_proj"), kv_dim, h, true)?,
                v: Linear::load(&a.pp("v_proj"), kv_dim, h, true)?,
                dense: Linear::load(&a.pp("dense"), h, q_dim, true)?,
                fc1: Linear::load(&l.pp("mlp.fc1"), inter, h, true)?,
                fc2: Linear::load(&l.pp("mlp.fc2"), h, inter, true)?,
            });
        }
        let c = PREFILL_CHUNK;
        let s = Scratch {
            normed: be.tensor(c, h),
            q: be.tensor(c, q_dim),
            k: be.tensor(c, kv_dim),
            v: be.tensor(c, kv_dim),
            attn: be.tensor(c, q_dim),
            attn_out: be.tensor(c, h),
            mlp_hidden: be.tensor(c, inter),
            mlp_out: be.tensor(c, h),
            last: be.tensor(c, h),
            logits: be.tensor(c, cfg.vocab_size),
        };
        let (rope_cos, rope_sin) = rope_tables(&be, &cfg, context_len);
        Ok(Phi2 {
            embed: m.matrix("embed_tokens.weight", &[cfg.vocab_size, h])?,
            layers,
            final_norm_weight: m.get("final_layernorm.weight", &[h])?,
            final_norm_bias: m.get("final_layernorm.bias", &[h])?,
            lm_head: Linear {
                weight: w.head_matrix("lm_head.weight", &[cfg.vocab_size, h])?,
                bias: if cfg.lm_head_bias {
                    Some(w.get("lm_head.bias", &[cfg.vocab_size])?)
                } else {
                    None
                },
            },
            rope_cos,
            rope_sin,
            cache: KvCache::new(&be, cfg.num_layers, kv_dim),
            s,
            be,
            cfg,
        })
    }
}

impl<B: Backend> Decoder<B> for Phi2<B> {
    fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    fn embed(&self, tokens: &[u32], x: &mut B::Tensor, row0: usize) {
        self.be.embed(&self.embed, tokens, x, row0);
    }

    fn forward(&mut self, x: &mut B::Tensor, pos0: usize) {
        let (be, cfg, s) = (&self.be, &self.cfg, &mut self.s);
        let n = be.rows(x);
        let attn_shape = AttentionShape {
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            causal: true,
            window: None,
        };
        let rope = |n_heads| RopeShape {
            n_heads,
            head_dim: cfg.head_dim,
            rotary_dim: cfg.rope.rotary_dim,
            style: cfg.rope.style,
        };
        for (layer, (k_cache, v_cache)) in self
            .layers
            .iter()
            .zip(self.cache.k.iter_mut().zip(self.cache.v.iter_mut()))
        {
            be.layer_norm(
                x,
                &layer.norm_weight,
                &layer.norm_bias,
                cfg.norm_eps,
                &mut s.normed,
            );

            // Attention and the MLP both read the normalised input: their four input
            // projections in one call.
            be.matmul_many(
                &s.normed,
                &mut [
                    layer.q.proj(&mut s.q),
                    layer.k.proj(&mut s.k),
                    layer.v.proj(&mut s.v),
                    layer.fc1.proj(&mut s.mlp_hidden),
                ],
            );
            be.rope(
                &mut s.q,
                &self.rope_cos,
                &self.rope_sin,
                rope(cfg.num_heads),
                pos0,
            );
            be.rope(
                &mut s.k,
                &self.rope_cos,
                &self.rope_sin,
                rope(cfg.num_kv_heads),
                pos0,
            );
            be.reserve_rows(k_cache, pos0 + n);
            be.reserve_rows(v_cache, pos0 + n);
            be.store_kv(&s.k, k_cache, pos0);
            be.store_kv(&s.v, v_cache, pos0);
            be.attention(&s.q, k_cache, v_cache, attn_shape, pos0, &mut s.attn);
            layer.dense.forward(be, &s.attn, &mut s.attn_out);

            // The MLP, in parallel with attention.
            be.activate(&mut s.mlp_hidden, cfg.activation);
            layer.fc2.forward(be, &s.mlp_hidden, &mut s.mlp_out);

            be.add(x, &s.attn_out);
            be.add(x, &s.mlp_out);
        }
    }

    fn logits(&mut self, x: &B::Tensor, start: usize, count: usize) -> &B::Tensor {
        let (be, s) = (&self.be, &mut self.s);
        be.set_rows(&mut s.last, count);
        be.copy_rows(x, start, count, &mut s.last, 0);
        be.layer_norm(
            &s.last,
            &self.final_norm_weight,
            &self.final_norm_bias,
            self.cfg.norm_eps,
            &mut s.normed,
        );
        self.lm_head.forward(be, &s.normed, &mut s.logits);
        &s.logits
    }

    fn weight_bytes(&self) -> usize {
        let be = &self.be;
        let mut n = be.weight_bytes(&self.embed) + self.lm_head.bytes(be);
        n += be.weight_bytes(&self.final_norm_weight) + be.weight_bytes(&self.final_norm_bias);
        for l in &self.layers {
            n += be.weight_bytes(&l.norm_weight) + be.weight_bytes(&l.norm_bias);
            for lin in [&l.q, &l.k, &l.v, &l.dense, &l.fc1, &l.fc2] {
                n += lin.bytes(be);
            }
        }
        n
    }

    fn kv_bytes(&self) -> usize {
        self.cache.bytes(&self.be)
    }

    fn decode_weight_bytes(&self) -> usize {
        self.weight_bytes() - self.be.weight_bytes(&self.embed)
    }
}
