//! What a checkpoint is, decided once from its config.json: the family, the language
//! model, and (for vision-language models) the tower, projector, image preprocessing,
//! image placeholder convention and prompt template.

use std::path::PathBuf;

use super::config::{LlmConfig, ProjectorKind, VisionConfig};

/// Model families, named as users know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// A text-only language model (the tokenizer's chat template formats prompts).
    TextOnly,
    /// MobileVLM v1 (LDP projector).
    MobileVlm,
    /// MobileVLM V2 (LDPv2 projector).
    MobileVlmV2,
    /// Imp with Phi-2 (Imp-v1-3B, Imp-v1.5-3B-Phi2).
    ImpPhi2,
    /// Imp-v1.5-2B-Qwen1.5.
    ImpQwen2,
    /// Imp-v1.5-4B-Phi3.
    ImpPhi3,
    /// BlueLM-V-3B's architecture: SigLIP, dynamic-resolution tiles, token downsampler,
    /// 2-layer MLP, LLaMA-style language model (`model_type: "bluelm_v"`).
    BlueLmV,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::TextOnly => "text",
            Family::MobileVlm => "mobilevlm",
            Family::MobileVlmV2 => "mobilevlm-v2",
            Family::ImpPhi2 => "imp-phi2",
            Family::ImpQwen2 => "imp-qwen2",
            Family::ImpPhi3 => "imp-phi3",
            Family::BlueLmV => "bluelm-v",
        }
    }
}

/// How the prompt marks where an image's embeddings go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePlaceholder {
    /// LLaVA / MobileVLM: the text is split at `<image>`, each piece tokenised on its own
    /// (BOS kept only on the first), and the sentinel id -200 stands between pieces.
    Sentinel,
    /// Imp's Hugging Face checkpoints: `<image>` is a vocabulary token with this id; the
    /// whole prompt is tokenised once and each occurrence is replaced.
    VocabId(u32),
}

/// The conversation formats of the reference repositories (`conversation.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptTemplate {
    /// The tokenizer's Jinja chat template (text-only models).
    Jinja,
    /// `conv_vicuna_v1` / `conv_phi2`: `SYSTEM USER: … ASSISTANT: …</s>USER: … ASSISTANT:`.
    VicunaV1,
    /// Imp's `conv_qwen2` (ChatML with Imp's system prompt).
    ImpQwen2,
    /// Imp's `conv_phi3`.
    ImpPhi3,
    /// BlueLM's chat format: `[|Human|]:…[|AI|]:…</s>[|Human|]:…[|AI|]:`.
    BlueLm,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resize {
    /// CLIPImageProcessor: shortest edge to `size`, then a centre crop of `size × size`.
    ShortestEdgeThenCrop,
    /// Imp/SigLIP: straight to `size × size`, aspect ratio not kept.
    Squash,
}

/// The family's image processor, as its reference code configures it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessorSpec {
    pub size: usize,
    pub resize: Resize,
    /// Pad to a centred square with this colour first (`image_aspect_ratio: "pad"`).
    pub pad_fill: Option<[u8; 3]>,
    /// Normalisation, in f64 as transformers keeps it (the exact decimal constants).
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// Where the vision tower's weights are.
#[derive(Clone, Debug, PartialEq)]
pub struct TowerWeights {
    /// Prefix of the tower's `vision_model` module in the main checkpoint.
    pub prefix: String,
    /// A separate tower directory (a local copy of the tower repo), used when the main
    /// checkpoint does not carry the tower.
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionSpec {
    pub tower: VisionConfig,
    /// Encoder layers to run: `hidden_states[select_layer]` needs exactly this many.
    pub layers_to_run: usize,
    /// CLIP's class token is not an image token (`mm_vision_select_feature: "patch"`).
    pub drop_cls: bool,
    pub projector: ProjectorKind,
    pub weights: TowerWeights,
    pub processor: ProcessorSpec,
    pub placeholder: ImagePlaceholder,
    /// Dynamic resolution (bluelm-v): images become tiles at the tower's size.
    pub tiling: Option<crate::image::tiles::TilingSpec>,
    /// Vision passes (tiles) run through the tower together.
    pub vision_batch: usize,
}

impl VisionSpec {
    /// Language-model positions one vision pass (an image, or one tile of it) occupies.
    pub fn image_tokens(&self) -> usize {
        self.projector.output_tokens(self.tower.grid_side())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub family: Family,
    pub llm: LlmConfig,
    pub vision: Option<VisionSpec>,
    pub template: PromptTemplate,
}
