//! LLaMA-family decoder (LLaMA, MobileLLaMA, SmolLM2): pre-RMSNorm blocks with rotary
//! self-attention (grouped-query when kv heads < heads) and a SwiGLU MLP; tied or untied
//! output head. Tensor names are those of transformers' `LlamaForCausalLM`.

use super::config::LlmConfig;
use super::{LanguageModel, Logits, WeightLoader};
use crate::backend::{AttentionShape, Backend, RopeShape};
use crate::error::{Error, Result};
use crate::load::safetensors::Checkpoint;

/// Tokens processed per forward chunk: bounds the activation buffers during prefill.
pub const PREFILL_CHUNK: usize = 128;

/// A linear layer `y = x·Wᵀ + b`.
pub struct Linear<B: Backend> {
    pub weight: B::Weight,
    pub bias: Option<B::Weight>,
}

impl<B: Backend> Linear<B> {
    pub fn load(w: &WeightLoader<B>, out_f: usize, in_f: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.get("weight", &[out_f, in_f])?,
            bias: if bias {
                Some(w.get("bias", &[out_f])?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, be: &B, x: &B::Tensor, out: &mut B::Tensor) {
        be.matmul(x, &self.weight, self.bias.as_ref(), out);
    }

    pub fn bytes(&self, be: &B) -> usize {
        be.weight_bytes(&self.weight) + self.bias.as_ref().map_or(0, |b| be.weight_bytes(b))
    }
}

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

/// Per-layer K and V rows, `[positions, kv_heads × head_dim]`, grown on demand.
struct KvCache<B: Backend> {
    k: Vec<B::Tensor>,
    v: Vec<B::Tensor>,
}

/// Activation buffers reused by every forward call.
struct Scratch<B: Backend> {
    x: B::Tensor,
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
    context_len: usize,
    cache: KvCache<B>,
    s: Scratch<B>,
}

impl<B: Backend> Llama<B> {
    /// Builds the model from the tensors under `prefix` in `ckpt` (empty for a plain LLM
    /// checkpoint) with room for `context_len` positions.
    pub fn load(
        be: B,
        cfg: LlmConfig,
        ckpt: &Checkpoint,
        prefix: &str,
        context_len: usize,
    ) -> Result<Self> {
        let root = WeightLoader::new(ckpt, &be);
        let w = if prefix.is_empty() {
            root
        } else {
            root.pp(prefix)
        };
        let h = cfg.hidden_size;
        let q_dim = cfg.num_heads * cfg.head_dim;
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let inter = cfg.intermediate_size;
        let m = w.pp("model");
        let embed = m.get("embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let mlp = l.pp("mlp");
            layers.push(Layer {
                input_norm: l.get("input_layernorm.weight", &[h])?,
                q: Linear::load(&a.pp("q_proj"), q_dim, h, cfg.attention_bias)?,
                k: Linear::load(&a.pp("k_proj"), kv_dim, h, cfg.attention_bias)?,
                v: Linear::load(&a.pp("v_proj"), kv_dim, h, cfg.attention_bias)?,
                o: Linear::load(&a.pp("o_proj"), h, q_dim, cfg.attention_bias)?,
                post_attention_norm: l.get("post_attention_layernorm.weight", &[h])?,
                gate: Linear::load(&mlp.pp("gate_proj"), inter, h, cfg.mlp_bias)?,
                up: Linear::load(&mlp.pp("up_proj"), inter, h, cfg.mlp_bias)?,
                down: Linear::load(&mlp.pp("down_proj"), h, inter, cfg.mlp_bias)?,
            });
        }
        let norm = m.get("norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(w.get("lm_head.weight", &[cfg.vocab_size, h])?)
        };

        let (rope_cos, rope_sin) = rope_tables(&be, &cfg, context_len);
        let cache = KvCache {
            k: (0..cfg.num_layers).map(|_| be.tensor(0, kv_dim)).collect(),
            v: (0..cfg.num_layers).map(|_| be.tensor(0, kv_dim)).collect(),
        };
        let c = PREFILL_CHUNK;
        let s = Scratch {
            x: be.tensor(c, h),
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
            be,
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope_cos,
            rope_sin,
            context_len,
            cache,
            s,
        })
    }

    /// One chunk of at most [`PREFILL_CHUNK`] tokens through every layer; leaves the final
    /// hidden states in `self.s.x`.
    fn forward_chunk(&mut self, tokens: &[u32], pos0: usize) {
        let (be, cfg, s) = (&self.be, &self.cfg, &mut self.s);
        let attn_shape = AttentionShape {
            n_heads: cfg.num_heads,
            n_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        };
        let rope = |n_heads| RopeShape {
            n_heads,
            head_dim: cfg.head_dim,
            rotary_dim: cfg.rope.rotary_dim,
            style: cfg.rope.style,
        };
        be.embed(&self.embed, tokens, &mut s.x);
        for (layer, (k_cache, v_cache)) in self
            .layers
            .iter()
            .zip(self.cache.k.iter_mut().zip(self.cache.v.iter_mut()))
        {
            // Attention block.
            be.rms_norm(&s.x, &layer.input_norm, cfg.norm_eps, &mut s.normed);
            layer.q.forward(be, &s.normed, &mut s.q);
            layer.k.forward(be, &s.normed, &mut s.k);
            layer.v.forward(be, &s.normed, &mut s.v);
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
            be.reserve_rows(k_cache, pos0 + tokens.len());
            be.reserve_rows(v_cache, pos0 + tokens.len());
            be.store_kv(&s.k, k_cache, pos0);
            be.store_kv(&s.v, v_cache, pos0);
            be.attention(&s.q, k_cache, v_cache, attn_shape, pos0, &mut s.attn);
            layer.o.forward(be, &s.attn, &mut s.proj);
            be.add(&mut s.x, &s.proj);

            // MLP block.
            be.rms_norm(
                &s.x,
                &layer.post_attention_norm,
                cfg.norm_eps,
                &mut s.normed,
            );
            layer.gate.forward(be, &s.normed, &mut s.gate);
            layer.up.forward(be, &s.normed, &mut s.up);
            be.swiglu(&s.gate, &s.up, &mut s.act);
            layer.down.forward(be, &s.act, &mut s.proj);
            be.add(&mut s.x, &s.proj);
        }
    }

    /// Final norm and output head over rows `start..start+count` of the last hidden states.
    fn head(&mut self, start: usize, count: usize) -> Vec<f32> {
        let (be, s) = (&self.be, &mut self.s);
        be.copy_rows(&s.x, start, count, &mut s.last);
        be.rms_norm(&s.last, &self.norm, self.cfg.norm_eps, &mut s.normed);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        be.matmul(&s.normed, head, None, &mut s.logits);
        be.read(&s.logits)
    }
}

/// cos/sin tables `[positions, rotary_dim / 2]` computed as transformers does: f32 inverse
/// frequencies times f32 positions.
fn rope_tables<B: Backend>(be: &B, cfg: &LlmConfig, positions: usize) -> (B::Tensor, B::Tensor) {
    let inv_freq = cfg.rope.inv_freq();
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let mut tc = be.tensor(positions, half);
    let mut ts = be.tensor(positions, half);
    be.write(&mut tc, &cos);
    be.write(&mut ts, &sin);
    (tc, ts)
}

impl<B: Backend> LanguageModel for Llama<B> {
    fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    fn forward(&mut self, tokens: &[u32], pos0: usize, logits: Logits) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("forward of zero tokens".into()));
        }
        if pos0 + tokens.len() > self.context_len {
            return Err(Error::ContextOverflow {
                prompt: pos0 + tokens.len(),
                context: self.context_len,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let mut out = Vec::new();
        let n_chunks = tokens.len().div_ceil(PREFILL_CHUNK);
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let p = pos0 + i * PREFILL_CHUNK;
            self.forward_chunk(chunk, p);
            match logits {
                Logits::All => out.extend(self.head(0, chunk.len())),
                Logits::Last if i + 1 == n_chunks => out = self.head(chunk.len() - 1, 1),
                Logits::Last => {}
            }
        }
        Ok(out)
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn weight_bytes(&self) -> usize {
        let be = &self.be;
        let mut n = be.weight_bytes(&self.embed) + be.weight_bytes(&self.norm);
        n += self.lm_head.as_ref().map_or(0, |w| be.weight_bytes(w));
        for l in &self.layers {
            n += be.weight_bytes(&l.input_norm) + be.weight_bytes(&l.post_attention_norm);
            for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                n += lin.bytes(be);
            }
        }
        n
    }

    fn kv_bytes(&self) -> usize {
        let be = &self.be;
        self.cache
            .k
            .iter()
            .chain(&self.cache.v)
            .map(|t| be.rows(t) * be.cols(t) * 4)
            .sum()
    }

    fn backend_name(&self) -> String {
        self.be.name()
    }
}
