//! Language-model hyper-parameters, independent of where they were read from.

/// Which decoder block a language model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmArch {
    /// LLaMA / MobileLLaMA / SmolLM2: RMSNorm, rotate-half RoPE, GQA, SwiGLU.
    Llama,
}

impl LlmArch {
    pub fn name(self) -> &'static str {
        match self {
            LlmArch::Llama => "llama",
        }
    }
}

/// How rotary frequencies are adjusted for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (all frequencies divided by it).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's piecewise rule: long wavelengths scaled by `factor`, short ones kept,
    /// a smooth blend in between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

/// How the two halves of a rotated pair are laid out inside a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Hugging Face `rotate_half` (GPT-NeoX): pairs (i, i + d/2).
    NeoX,
    /// Original Meta / GPT-J / ggml "norm" layout: pairs (2i, 2i + 1).
    Interleaved,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    /// Dimensions of each head that are rotated (head_dim × partial_rotary_factor).
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
    pub style: RopeStyle,
}

impl RopeConfig {
    /// Inverse frequencies θ^(-2i/d) for i in 0..rotary_dim/2, with the scaling applied
    /// exactly as transformers' `ROPE_INIT_FUNCTIONS` does.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.rotary_dim;
        // transformers computes these in f32 via `base ** (arange(0, d, 2).float() / d)`.
        let base: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f32 / d as f32))
            .collect();
        match &self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_freq_wavelen {
                            f / factor
                        } else if wavelen < high_freq_wavelen {
                            f
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
}

/// Everything a decoder-only language model needs to be built and run.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig {
    pub arch: LlmArch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub norm_eps: f32,
    pub rope: RopeConfig,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint says it was saved in (informational).
    pub dtype: Option<String>,
}

impl LlmConfig {
    /// Parameter count of the language model (for the model card).
    pub fn param_count(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let attn = h * (q + 2 * kv) + q * h;
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * per_layer + h
    }
}
