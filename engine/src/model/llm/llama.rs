//! LLaMA-style decoder: pre-RMSNorm blocks with rotary self-attention (grouped-query when
//! kv heads < heads) and a gated MLP; tied or untied head. One forward pass serves three
//! checkpoint layouts, mapped at load time:
//!
//! | family | attention weights | MLP weights |
//! |---|---|---|
//! | LLaMA, MobileLLaMA, SmolLM2 | `q_proj`, `k_proj`, `v_proj`, `o_proj` (biases if `attention_bias`) | `gate_proj`, `up_proj`, `down_proj` |
//! | Qwen2 / Qwen1.5 | the same, q/k/v with biases | the same |
//! | Phi-3 | fused `qkv_proj` = [q; k; v] rows | fused `gate_up_proj` = [gate; up] rows |

use super::{Decoder, KvCache, Linear, PREFILL_CHUNK, rope_tables};
use crate::backend::{AttentionShape, Backend, RopeShape};
use crate::error::Result;
use crate::model::WeightLoader;
use crate::model::config::{LlmArch, LlmConfig};

struct Layer<B: Backend> {
    input_norm: B::Weight,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    post_attention_norm: B::Weight,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
}

impl<B: Backend> Layer<B> {
    fn load(l: &WeightLoader<B>, cfg: &LlmConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let q_dim = cfg.num_heads * cfg.head_dim;
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let inter = cfg.intermediate_size;
        let a = l.pp("self_attn");
        let mlp = l.pp("mlp");
        let (q, k, v, gate, up) = if cfg.arch == LlmArch::Phi3 {
            let qkv = a.pp("qkv_proj");
            let fused = q_dim + 2 * kv_dim;
            let gate_up = mlp.pp("gate_up_proj");
            (
                Linear::load_rows(&qkv, fused, h, 0, q_dim, cfg.qkv_bias)?,
                Linear::load_rows(&qkv, fused, h, q_dim, kv_dim, cfg.qkv_bias)?,
                Linear::load_rows(&qkv, fused, h, q_dim + kv_dim, kv_dim, cfg.qkv_bias)?,
                Linear::load_rows(&gate_up, 2 * inter, h, 0, inter, cfg.mlp_bias)?,
                Linear::load_rows(&gate_up, 2 * inter, h, inter, inter, cfg.mlp_bias)?,
            )
        } else {
            (
                Linear::load(&a.pp("q_proj"), q_dim, h, cfg.qkv_bias)?,
                Linear::load(&a.pp("k_proj"), kv_dim, h, cfg.qkv_bias)?,
                Linear::load(&a.pp("v_proj"), kv_dim, h, cfg.qkv_bias)?,
                Linear::load(&mlp.pp("gate_proj"), inter, h, cfg.mlp_bias)?,
                Linear::load(&mlp.pp("up_proj"), inter, h, cfg.mlp_bias)?,
            )
        };
        Ok(Layer {
            input_norm: l.get("input_layernorm.weight", &[h])?,
            q,
            k,
            v,
            o: Linear::load(&a.pp("o_proj"), h, q_dim, cfg.o_bias)?,
            post_attention_norm: l.get("post_attention_layernorm.weight", &[h])?,
            gate,
            up,
            down: Linear::load(&mlp.pp("down_proj"), h, inter, cfg.mlp_bias)?,
        })
    }

    fn linears(&self) -> [&Linear<B>; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
}

/// Activation buffers reused by every forward call.
struct Scratch<B: Backend> {
    normed: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    attn: B::Tensor,
    proj: B::Tensor,
    gate: B::Tensor,
    up: B::Tensor,
    act: B::Tensor,
    last: B::Tensor,
    logits: B::Tensor,
}

pub struct Llama<B: Backend> {
    be: B,
    cfg: LlmConfig,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    /// `None` when the head is tied to the embeddings.
    lm_head: Option<B::Weight>,
    rope_cos: B::Tensor,
    rope_sin: B::Tensor,
    cache: KvCache<B>,
    s: Scratch<B>,
}

impl<B: Backend> Llama<B> {
    /// Builds the model from `w` (pointing at the LM's root: `model.*`, `lm_head.*`) with
    /// room for `context_len` positions.
    pub fn load(be: B, cfg: LlmConfig, w: &WeightLoader<B>, context_len: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        let q_dim = cfg.num_heads * cfg.head_dim;
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let m = w.pp("model");
        // Tied embeddings are also the output head.
        let embed = if cfg.tie_word_embeddings {
            m.head_matrix("embed_tokens.weight", &[cfg.vocab_size, h])?
        } else {
            m.matrix("embed_tokens.weight", &[cfg.vocab_size, h])?
        };
        let layers = (0..cfg.num_layers)
            .map(|i| Layer::load(&m.pp(format!("layers.{i}")), &cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = m.get("norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(w.head_matrix("lm_head.weight", &[cfg.vocab_size, h])?)
        };
        let (rope_cos, rope_sin) = rope_tables(&be, &cfg, context_len);
        let c = PREFILL_CHUNK;
        let inter = cfg.intermediate_size;
        let s = Scratch {
            normed: be.tensor(c, h),
            q: be.tensor(c, q_dim),
            k: be.tensor(c, kv_dim),
            v: be.tensor(c, kv_dim),
            attn: be.tensor(c, q_dim),
            proj: be.tensor(c, h),
            gate: be.tensor(c, inter),
            up: be.tensor(c, inter),
            act: be.tensor(c, inter),
            last: be.tensor(c, h),
            logits: be.tensor(c, cfg.vocab_size),
        };
        Ok(Llama {
            cache: KvCache::new(&be, cfg.num_layers, kv_dim),
            be,
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope_cos,
            rope_sin,
            s,
        })
    }
}

impl<B: Backend> Decoder<B> for Llama<B> {
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
            window: cfg.sliding_window,
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
            // Attention block.
            be.rms_norm(x, &layer.input_norm, cfg.norm_eps, &mut s.normed);
            be.matmul_many(
                &s.normed,
                &mut [
                    layer.q.proj(&mut s.q),
                    layer.k.proj(&mut s.k),
                    layer.v.proj(&mut s.v),
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
            layer.o.forward(be, &s.attn, &mut s.proj);
            be.add(x, &s.proj);

            // MLP block.
            be.rms_norm(x, &layer.post_attention_norm, cfg.norm_eps, &mut s.normed);
            be.matmul_many(
                &s.normed,
                &mut [layer.gate.proj(&mut s.gate), layer.up.proj(&mut s.up)],
            );
            be.gated(&s.gate, &s.up, cfg.activation, &mut s.act);
            layer.down.forward(be, &s.act, &mut s.proj);
            be.add(x, &s.proj);
        }
    }

    fn logits(&mut self, x: &B::Tensor, start: usize, count: usize) -> &B::Tensor {
        let (be, s) = (&self.be, &mut self.s);
        be.set_rows(&mut s.last, count);
        be.copy_rows(x, start, count, &mut s.last, 0);
        be.rms_norm(&s.last, &self.norm, self.cfg.norm_eps, &mut s.normed);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        be.matmul(&s.normed, head, None, &mut s.logits);
        &s.logits
    }

    fn weight_bytes(&self) -> usize {
        let be = &self.be;
        let mut n = be.weight_bytes(&self.embed) + be.weight_bytes(&self.norm);
        n += self.lm_head.as_ref().map_or(0, |w| be.weight_bytes(w));
        for l in &self.layers {
            n += be.weight_bytes(&l.input_norm) + be.weight_bytes(&l.post_attention_norm);
            n += l.linears().iter().map(|lin| lin.bytes(be)).sum::<usize>();
        }
        n
    }

    fn kv_bytes(&self) -> usize {
        self.cache.bytes(&self.be)
    }

    fn decode_weight_bytes(&self) -> usize {
        match self.lm_head {
            Some(_) => self.weight_bytes() - self.be.weight_bytes(&self.embed),
            None => self.weight_bytes(),
        }
    }
}
