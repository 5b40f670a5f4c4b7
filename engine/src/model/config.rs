//! Language-model hyper-parameters, independent of where they were read from.

pub use crate::backend::Activation;

/// Which decoder block a language model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmArch {
    /// LLaMA / MobileLLaMA / SmolLM2: RMSNorm, rotate-half RoPE, GQA, SwiGLU.
    Llama,
    /// Qwen2 / Qwen1.5: LLaMA with q/k/v biases.
    Qwen2,
    /// Phi-3: LLaMA with fused `qkv_proj` and `gate_up_proj` (gate first).
    Phi3,
    /// Phi-2: one LayerNorm feeding attention and MLP in parallel, partial rotary, biases
    /// everywhere, gelu_new MLP, biased head.
    Phi2,
}

impl LlmArch {
    pub fn name(self) -> &'static str {
        match self {
            LlmArch::Llama => "llama",
            LlmArch::Qwen2 => "qwen2",
            LlmArch::Phi3 => "phi3",
            LlmArch::Phi2 => "phi2",
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
    /// The MLP's activation (gated for LLaMA-style blocks, plain for Phi-2).
    pub activation: Activation,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Bias on the output head (Phi-2).
    pub lm_head_bias: bool,
    /// Sliding-window attention span (Phi-3), if any.
    pub sliding_window: Option<usize>,
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
        let mlp_mats = if self.arch == LlmArch::Phi2 { 2 } else { 3 };
        let mlp = mlp_mats * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * per_layer + h
    }
}

/// The two vision encoders the supported families use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionKind {
    /// OpenAI CLIP ViT: class token, pre-LayerNorm, quick_gelu, bias-free patch conv.
    Clip,
    /// SigLIP ViT: no class token, patch conv with bias, gelu tanh.
    Siglip,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub kind: VisionKind,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Layers in the original tower (the checkpoint may hold fewer).
    pub num_layers: usize,
    pub num_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub norm_eps: f32,
    pub activation: Activation,
}

impl VisionConfig {
    pub fn grid_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid_side() * self.grid_side()
    }
    /// Positions in the encoder: the patches plus CLIP's class token.
    pub fn num_positions(&self) -> usize {
        self.num_patches() + usize::from(self.kind == VisionKind::Clip)
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// How vision features become language-model embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorKind {
    /// One Linear (`linear`).
    Linear,
    /// Linear–GELU–Linear (`mlp2x_gelu`; Imp, LLaVA-1.5).
    Mlp2xGelu,
    /// MobileVLM's lightweight downsample projector (`ldpnet`): MLP then two MobileNetV3
    /// inverted-residual blocks (stride 1, then 2).
    Ldp,
    /// MobileVLM V2's `ldpnetv2`: MLP, 2×2 average pool, PEG depthwise conv + residual.
    Ldpv2,
    /// BlueLM-V's token downsampler then a 2-layer MLP: every `factor × factor`
    /// neighbourhood of the (zero-padded) token grid concatenated along channels, then
    /// Linear–GELU–Linear (see `model/downsample.rs`).
    DownsampleMlp { factor: usize },
}

impl ProjectorKind {
    /// Output tokens for a square grid of `side × side` vision tokens.
    pub fn output_tokens(self, side: usize) -> usize {
        match self {
            ProjectorKind::Linear | ProjectorKind::Mlp2xGelu => side * side,
            // Stride-2 3×3 conv with padding 1.
            ProjectorKind::Ldp => side.div_ceil(2) * side.div_ceil(2),
            // AdaptiveAvgPool2d((12, 12)) as the MobileVLM code hard-codes it.
            ProjectorKind::Ldpv2 => 144,
            ProjectorKind::DownsampleMlp { factor } => side.div_ceil(factor).pow(2),
        }
    }
}
