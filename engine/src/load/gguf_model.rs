//! Models from GGUF files: llama.cpp's tensor names mapped to the Hugging Face names the
//! model code reads, hyper-parameters from `{arch}.*` metadata, and llama.cpp's CLIP
//! "mmproj" files for MobileVLM (projector types `ldp` and `ldpv2`).
//!
//! Two llama.cpp conventions are honoured rather than undone:
//! - LLaMA-architecture Q and K rows are permuted by the converter so that rotary pairs are
//!   adjacent (ggml's "norm" RoPE); the weights are used as stored and RoPE runs in the
//!   interleaved layout, which gives the same attention scores as the Hugging Face layout.
//! - In mmproj files `ffn_down` is CLIP's *first* MLP matrix (`fc1`) and `ffn_up` the second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::gguf::{GgufFile, Value};
use super::source::TensorSource;
use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::model::config::{
    LlmArch, LlmConfig, ProjectorKind, RopeConfig, RopeScaling, RopeStyle, VisionConfig, VisionKind,
};
use crate::model::spec::{
    Family, ImagePlaceholder, ModelSpec, ProcessorSpec, PromptTemplate, Resize, TowerWeights,
    VisionSpec,
};
use crate::tensor::HostTensor;

/// The Hugging Face name of a llama.cpp LLM tensor (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_name_of_llm_tensor(name: &str) -> Option<String> {
    let (stem, kind) = name.rsplit_once('.')?;
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let module = match part {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{module}")
        }
    };
    Some(format!("{mapped}.{kind}"))
}

const TOWER: &str = "model.vision_tower.vision_tower.vision_model";

/// The Hugging Face (MobileVLM checkpoint) name of an mmproj tensor.
pub fn hf_name_of_mmproj_tensor(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("mm.model.") {
        // ldpv2's MLP and PEG sit one level up in MobileVLM's module tree.
        if let Some(r) = rest.strip_prefix("peg.") {
            return Some(format!("model.mm_projector.peg.peg.{r}"));
        }
        if rest.starts_with("mlp.0.") || rest.starts_with("mlp.2.") {
            return Some(format!("model.mm_projector.mlp.{rest}"));
        }
        return Some(format!("model.mm_projector.model.{rest}"));
    }
    let rest = name.strip_prefix("v.")?;
    let mapped = match rest {
        "class_embd" => "embeddings.class_embedding".to_string(),
        "patch_embd.weight" => "embeddings.patch_embedding.weight".to_string(),
        "position_embd.weight" => "embeddings.position_embedding.weight".to_string(),
        "pre_ln.weight" => "pre_layrnorm.weight".to_string(),
        "pre_ln.bias" => "pre_layrnorm.bias".to_string(),
        _ => {
            let rest = rest.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let (module, kind) = part.rsplit_once('.')?;
            let module = match module {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_out" => "self_attn.out_proj",
                "ln1" => "layer_norm1",
                "ln2" => "layer_norm2",
                // The converter's naming swap: ffn_down holds fc1, ffn_up holds fc2.
                "ffn_down" => "mlp.fc1",
                "ffn_up" => "mlp.fc2",
                _ => return None,
            };
            format!("encoder.layers.{layer}.{module}.{kind}")
        }
    };
    Some(format!("{TOWER}.{mapped}"))
}

/// A GGUF file seen through Hugging Face tensor names.
pub struct GgufSource {
    file: GgufFile,
    /// Hugging Face name → GGUF name.
    names: HashMap<String, String>,
}

impl GgufSource {
    pub fn new(file: GgufFile, map: fn(&str) -> Option<String>) -> Self {
        let names = file
            .tensors
            .keys()
            .filter_map(|g| map(g).map(|hf| (hf, g.clone())))
            .collect();
        GgufSource { file, names }
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl TensorSource for GgufSource {
    fn location(&self) -> &Path {
        self.file.path()
    }
    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let g = self.names.get(name)?;
        self.file.tensors.get(g).map(|t| t.shape())
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        match self.names.get(name) {
            Some(g) => self.file.tensor(g),
            None => Err(Error::MissingTensor {
                path: self.file.path().to_path_buf(),
                name: name.to_string(),
            }),
        }
    }
    fn path_of(&self, _name: &str) -> PathBuf {
        self.file.path().to_path_buf()
    }
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
    fn stored_bytes(&self, name: &str) -> Option<u64> {
        let t = self.file.tensors.get(self.names.get(name)?)?;
        Some((t.end - t.start) as u64)
    }
}

/// Several sources searched in order (an LLM GGUF and its mmproj).
pub struct Sources(pub Vec<Box<dyn TensorSource>>);

impl Sources {
    fn find(&self, name: &str) -> Option<&dyn TensorSource> {
        self.0.iter().map(|s| s.as_ref()).find(|s| s.contains(name))
    }
}

impl TensorSource for Sources {
    fn location(&self) -> &Path {
        self.0.first().map_or(Path::new(""), |s| s.location())
    }
    fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.find(name)?.shape(name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        match self.find(name) {
            Some(s) => s.tensor(name),
            None => Err(Error::MissingTensor {
                path: self.location().to_path_buf(),
                name: name.to_string(),
            }),
        }
    }
    fn path_of(&self, name: &str) -> PathBuf {
        self.find(name)
            .map_or_else(|| self.location().to_path_buf(), |s| s.path_of(name))
    }
    fn names(&self) -> Vec<String> {
        self.0.iter().flat_map(|s| s.names()).collect()
    }
    fn stored_bytes(&self, name: &str) -> Option<u64> {
        self.find(name)?.stored_bytes(name)
    }
}

/// Typed metadata access with errors that name the file and the key.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn missing(&self, key: &str) -> Error {
        Error::MissingConfigKey {
            path: self.file.path().to_path_buf(),
            key: key.to_string(),
        }
    }
    fn bad(&self, key: &str, reason: &str) -> Error {
        Error::bad_value(self.file.path(), key, reason)
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(key, "expected a non-negative integer")),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let n = self.opt_usize(key)?.ok_or_else(|| self.missing(key))?;
        if n == 0 {
            return Err(self.bad(key, "must be positive"));
        }
        Ok(n)
    }
    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.bad(key, "expected a number")),
        }
    }
    fn str(&self, key: &str) -> Result<&str> {
        self.file
            .get(key)
            .ok_or_else(|| self.missing(key))?
            .as_str()
            .ok_or_else(|| self.bad(key, "expected a string"))
    }
    fn f64_triple(&self, key: &str, default: [f64; 3]) -> Result<[f64; 3]> {
        match self.file.get(key).and_then(Value::as_array) {
            None => Ok(default),
            Some(a) if a.len() == 3 => {
                let mut out = [0.0; 3];
                for (o, v) in out.iter_mut().zip(a) {
                    *o = v.as_f64().ok_or_else(|| self.bad(key, "not a number"))?;
                }
                Ok(out)
            }
            Some(_) => Err(self.bad(key, "expected three numbers")),
        }
    }
}

/// The language model described by an LLM GGUF's metadata.
pub fn llm_config(file: &GgufFile) -> Result<LlmConfig> {
    let m = Meta { file };
    let arch_name = m.str("general.architecture")?;
    let (arch, style) = match arch_name {
        // The converter permuted Q/K for llama: keep it and rotate adjacent pairs.
        "llama" => (LlmArch::Llama, RopeStyle::Interleaved),
        "qwen2" => (LlmArch::Qwen2, RopeStyle::NeoX),
        other => {
            return Err(Error::UnsupportedArchitecture {
                path: file.path().to_path_buf(),
                arch: other.to_string(),
                supported: "llama, qwen2 (GGUF); mmproj files with projector ldp, ldpv2".into(),
            });
        }
    };
    let k = |s: &str| format!("{arch_name}.{s}");
    let hidden = m.usize(&k("embedding_length"))?;
    let heads = m.usize(&k("attention.head_count"))?;
    let kv_heads = m.opt_usize(&k("attention.head_count_kv"))?.unwrap_or(heads);
    if !heads.is_multiple_of(kv_heads) || !hidden.is_multiple_of(heads) {
        return Err(m.bad(&k("attention.head_count_kv"), "heads do not divide evenly"));
    }
    let head_dim = hidden / heads;
    let rotary_dim = m.opt_usize(&k("rope.dimension_count"))?.unwrap_or(head_dim);
    let scaling = match file.get(&k("rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: m.opt_f32(&k("rope.scaling.factor"))?.unwrap_or(1.0),
        },
        Some(other) => {
            return Err(m.bad(
                &k("rope.scaling.type"),
                &format!("RoPE scaling `{other}` is not supported"),
            ));
        }
    };
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(<[Value]>::len);
    let vocab_size = match m.opt_usize(&k("vocab_size"))? {
        Some(v) => v,
        None => tokens.ok_or_else(|| m.missing(&k("vocab_size")))?,
    };
    let id = |key: &str| file.get(key).and_then(Value::as_u64).map(|v| v as u32);
    Ok(LlmConfig {
        arch,
        vocab_size,
        hidden_size: hidden,
        intermediate_size: m.usize(&k("feed_forward_length"))?,
        num_layers: m.usize(&k("block_count"))?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        max_position_embeddings: m.opt_usize(&k("context_length"))?.unwrap_or(2048),
        norm_eps: m
            .opt_f32(&k("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5),
        rope: RopeConfig {
            theta: m.opt_f32(&k("rope.freq_base"))?.unwrap_or(10000.0),
            rotary_dim,
            scaling,
            style,
        },
        activation: Activation::Silu,
        tie_word_embeddings: !file.tensors.contains_key("output.weight"),
        qkv_bias: file.tensors.contains_key("blk.0.attn_q.bias"),
        o_bias: file.tensors.contains_key("blk.0.attn_output.bias"),
        mlp_bias: false,
        lm_head_bias: false,
        sliding_window: None,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        dtype: None,
    })
}

/// The vision part described by a llama.cpp CLIP mmproj file (MobileVLM's ldp / ldpv2).
pub fn vision_spec(file: &GgufFile) -> Result<VisionSpec> {
    let m = Meta { file };
    if m.str("general.architecture")? != "clip" {
        return Err(m.bad(
            "general.architecture",
            "an mmproj file must have architecture `clip`",
        ));
    }
    let projector = match file.get("clip.projector_type").and_then(Value::as_str) {
        Some("ldp") => ProjectorKind::Ldp,
        Some("ldpv2") => ProjectorKind::Ldpv2,
        Some("mlp") => ProjectorKind::Mlp2xGelu,
        other => {
            return Err(m.bad(
                "clip.projector_type",
                &format!("projector {other:?} is not supported (ldp, ldpv2, mlp)"),
            ));
        }
    };
    let gelu = file
        .get("clip.use_gelu")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let blocks = m.usize("clip.vision.block_count")?;
    // Layers to run for hidden_states[select]: newer converters record the feature layer
    // and keep every layer; older ones dropped the layers after it, so all stored blocks
    // run. A full 24-layer CLIP-L/336 without the key comes from a newer converter
    // (MobileVLM converts from the original tower) and needs hidden_states[-2].
    let feature_layer = file
        .get("clip.vision.feature_layer")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().filter_map(Value::as_u64).max())
        .map(|v| v as usize);
    let image_size = m.usize("clip.vision.image_size")?;
    let layers_to_run = match feature_layer {
        Some(l) if l >= 1 && l <= blocks => l,
        Some(l) => {
            return Err(m.bad(
                "clip.vision.feature_layer",
                &format!("{l} is outside the {blocks} layers"),
            ));
        }
        None if blocks == 24 && image_size == 336 => 23,
        None => blocks,
    };
    let tower = VisionConfig {
        kind: VisionKind::Clip,
        hidden_size: m.usize("clip.vision.embedding_length")?,
        intermediate_size: m.usize("clip.vision.feed_forward_length")?,
        num_layers: blocks,
        num_heads: m.usize("clip.vision.attention.head_count")?,
        image_size,
        patch_size: m.usize("clip.vision.patch_size")?,
        norm_eps: m
            .opt_f32("clip.vision.attention.layer_norm_epsilon")?
            .unwrap_or(1e-5),
        activation: if gelu {
            Activation::Gelu
        } else {
            Activation::QuickGelu
        },
    };
    let mean = m.f64_triple("clip.vision.image_mean", super::spec::CLIP_MEAN)?;
    Ok(VisionSpec {
        layers_to_run,
        drop_cls: true,
        projector,
        weights: TowerWeights {
            prefix: TOWER.into(),
            dir: None,
        },
        processor: ProcessorSpec {
            size: tower.image_size,
            resize: Resize::ShortestEdgeThenCrop,
            // MobileVLM pads to a square with the mean colour (llama.cpp pads top-left;
            // we follow the reference and centre the image).
            pad_fill: Some(mean.map(|v| (v * 255.0) as u8)),
            mean,
            std: m.f64_triple("clip.vision.image_std", super::spec::CLIP_STD)?,
        },
        placeholder: ImagePlaceholder::Sentinel,
        tiling: None,
        vision_batch: 1,
        tower,
    })
}

/// The spec of an LLM GGUF, with an optional mmproj making it a MobileVLM.
pub fn model_spec(llm: &GgufFile, mmproj: Option<&GgufFile>) -> Result<ModelSpec> {
    let cfg = llm_config(llm)?;
    let vision = mmproj.map(vision_spec).transpose()?;
    let (family, template) = match &vision {
        None => (Family::TextOnly, PromptTemplate::Jinja),
        Some(v) if v.projector == ProjectorKind::Ldpv2 => {
            (Family::MobileVlmV2, PromptTemplate::VicunaV1)
        }
        Some(_) => (Family::MobileVlm, PromptTemplate::VicunaV1),
    };
    Ok(ModelSpec {
        family,
        llm: cfg,
        vision,
        template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llm_names() {
        assert_eq!(
            hf_name_of_llm_tensor("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name_of_llm_tensor("blk.12.ffn_gate.weight").unwrap(),
            "model.layers.12.mlp.gate_proj.weight"
        );
        assert_eq!(
            hf_name_of_llm_tensor("blk.0.attn_q.bias").unwrap(),
            "model.layers.0.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf_name_of_llm_tensor("output.weight").unwrap(),
            "lm_head.weight"
        );
        assert!(hf_name_of_llm_tensor("rope_freqs.weight").is_none());
    }

    #[test]
    fn maps_mmproj_names_with_the_ffn_swap() {
        assert_eq!(
            hf_name_of_mmproj_tensor("v.blk.3.ffn_down.weight").unwrap(),
            format!("{TOWER}.encoder.layers.3.mlp.fc1.weight")
        );
        assert_eq!(
            hf_name_of_mmproj_tensor("v.blk.3.ffn_up.bias").unwrap(),
            format!("{TOWER}.encoder.layers.3.mlp.fc2.bias")
        );
        assert_eq!(
            hf_name_of_mmproj_tensor("mm.model.mb_block.1.block.0.0.weight").unwrap(),
            "model.mm_projector.model.mb_block.1.block.0.0.weight"
        );
        assert_eq!(
            hf_name_of_mmproj_tensor("mm.model.mlp.3.weight").unwrap(),
            "model.mm_projector.model.mlp.3.weight"
        );
        assert_eq!(
            hf_name_of_mmproj_tensor("mm.model.mlp.2.bias").unwrap(),
            "model.mm_projector.mlp.mlp.2.bias"
        );
        assert_eq!(
            hf_name_of_mmproj_tensor("mm.model.peg.0.weight").unwrap(),
            "model.mm_projector.peg.peg.0.weight"
        );
    }
}
