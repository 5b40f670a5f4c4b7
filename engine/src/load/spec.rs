//! config.json → [`ModelSpec`]: family detection and the vision-language fields of the
//! MobileVLM and Imp checkpoints (`mm_vision_tower`, `mm_projector_type`,
//! `mm_vision_select_layer`, `image_aspect_ratio`, `image_token_index`, ...).
//!
//! The vision tower's own hyper-parameters come from, in order: an inline
//! `vision_tower_config` (Imp's Hugging Face checkpoints), a local directory named by
//! `mm_vision_tower` (relative to the checkpoint or absolute), or a built-in table of the
//! public towers these families use.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::hf::{ConfigReader, parse_llm_config, read_json};
use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::model::config::{ProjectorKind, VisionConfig, VisionKind};
use crate::model::spec::{
    Family, ImagePlaceholder, ModelSpec, ProcessorSpec, PromptTemplate, Resize, TowerWeights,
    VisionSpec,
};

pub use crate::image::{CLIP_MEAN, CLIP_STD};

/// Where MobileVLM and Imp keep the tower's `vision_model` module.
const TOWER_PREFIX: &str = "model.vision_tower.vision_tower.vision_model";

/// Public towers these families name by hub id, for checkpoints whose config carries only
/// the name (MobileVLM: "openai/clip-vit-large-patch14-336").
fn builtin_tower(name: &str) -> Option<VisionConfig> {
    let clip_l = |image_size| VisionConfig {
        kind: VisionKind::Clip,
        hidden_size: 1024,
        intermediate_size: 4096,
        num_layers: 24,
        num_heads: 16,
        image_size,
        patch_size: 14,
        norm_eps: 1e-5,
        activation: Activation::QuickGelu,
    };
    let siglip_so400m = |image_size| VisionConfig {
        kind: VisionKind::Siglip,
        hidden_size: 1152,
        intermediate_size: 4304,
        num_layers: 27,
        num_heads: 16,
        image_size,
        patch_size: 14,
        norm_eps: 1e-6,
        activation: Activation::GeluTanh,
    };
    Some(match name.trim_end_matches('/') {
        "openai/clip-vit-large-patch14-336" => clip_l(336),
        "openai/clip-vit-large-patch14" => clip_l(224),
        "google/siglip-so400m-patch14-384" => siglip_so400m(384),
        _ => return None,
    })
}

fn vision_kind(model_type: Option<&str>, name_hint: &str) -> Option<VisionKind> {
    match model_type {
        Some("clip_vision_model" | "clip") => Some(VisionKind::Clip),
        Some("siglip_vision_model" | "siglip") => Some(VisionKind::Siglip),
        _ if name_hint.to_lowercase().contains("siglip") => Some(VisionKind::Siglip),
        _ if name_hint.to_lowercase().contains("clip") => Some(VisionKind::Clip),
        _ => None,
    }
}

/// A CLIP/SigLIP vision config object (or a full CLIP/SigLIP config holding one under
/// `vision_config`).
fn parse_tower(path: &Path, value: &Value, name_hint: &str) -> Result<VisionConfig> {
    let full = ConfigReader::new(path, value)?;
    let cfg = match full.nested("vision_config")? {
        Some(v) => v,
        None => ConfigReader::new(path, value)?,
    };
    let model_type = cfg.opt_str("model_type")?.or(full.opt_str("model_type")?);
    let kind = vision_kind(model_type, name_hint).ok_or_else(|| {
        Error::bad_value(
            path,
            "model_type",
            format!("cannot tell whether vision tower `{name_hint}` is CLIP or SigLIP"),
        )
    })?;
    let (default_eps, default_act) = match kind {
        VisionKind::Clip => (1e-5, "quick_gelu"),
        VisionKind::Siglip => (1e-6, "gelu_pytorch_tanh"),
    };
    let act = cfg.opt_str("hidden_act")?.unwrap_or(default_act);
    let config = VisionConfig {
        kind,
        hidden_size: cfg.usize("hidden_size")?,
        intermediate_size: cfg.usize("intermediate_size")?,
        num_layers: cfg.usize("num_hidden_layers")?,
        num_heads: cfg.usize("num_attention_heads")?,
        image_size: cfg.usize("image_size")?,
        patch_size: cfg.usize("patch_size")?,
        norm_eps: cfg.opt_f32("layer_norm_eps")?.unwrap_or(default_eps),
        activation: Activation::from_hf_name(act).ok_or_else(|| {
            Error::bad_value(path, "hidden_act", format!("`{act}` is not supported"))
        })?,
    };
    if !config.hidden_size.is_multiple_of(config.num_heads)
        || !config.image_size.is_multiple_of(config.patch_size)
    {
        return Err(Error::bad_value(
            path,
            "hidden_size",
            "heads must divide the width and patches the image size",
        ));
    }
    Ok(config)
}

/// The tower's directory if `name` is a local path (relative to the checkpoint first).
fn local_tower_dir(model_dir: &Path, name: &str) -> Option<PathBuf> {
    let relative = model_dir.join(name);
    if relative.join("config.json").is_file() {
        return Some(relative);
    }
    let absolute = PathBuf::from(name);
    (absolute.is_absolute() && absolute.join("config.json").is_file()).then_some(absolute)
}

fn projector_kind(path: &Path, name: &str) -> Result<ProjectorKind> {
    // The reference repositories match these by prefix.
    Ok(if name.starts_with("ldpnetv2") {
        ProjectorKind::Ldpv2
    } else if name.starts_with("ldpnet") {
        ProjectorKind::Ldp
    } else if name == "mlp2x_gelu" {
        ProjectorKind::Mlp2xGelu
    } else if name == "linear" {
        ProjectorKind::Linear
    } else {
        return Err(Error::bad_value(
            path,
            "mm_projector_type",
            format!(
                "projector `{name}` is not supported (supported: linear, mlp2x_gelu, ldpnet, ldpnetv2)"
            ),
        ));
    })
}

/// CLIPImageProcessor settings from a tower directory's preprocessor_config.json.
fn clip_processor(tower_dir: Option<&Path>, image_size: usize) -> Result<ProcessorSpec> {
    let mut spec = ProcessorSpec {
        size: image_size,
        resize: Resize::ShortestEdgeThenCrop,
        pad_fill: None,
        mean: CLIP_MEAN,
        std: CLIP_STD,
    };
    let Some(path) = tower_dir.map(|d| d.join("preprocessor_config.json")) else {
        return Ok(spec);
    };
    if !path.is_file() {
        return Ok(spec);
    }
    let json = read_json(&path)?;
    let p = ConfigReader::new(&path, &json)?;
    if let Some(size) = p.nested("size")? {
        spec.size = size.usize("shortest_edge")?;
    }
    if let Some(crop) = p.nested("crop_size")? {
        let (h, w) = (crop.usize("height")?, crop.usize("width")?);
        if h != spec.size || w != spec.size {
            return Err(Error::bad_value(
                &path,
                "crop_size",
                format!(
                    "only a square crop equal to the resize ({}) is supported, got {h}×{w}",
                    spec.size
                ),
            ));
        }
    }
    let triple = |key: &str, default: [f64; 3]| -> Result<[f64; 3]> {
        match p.get(key).and_then(Value::as_array) {
            None => Ok(default),
            Some(a) if a.len() == 3 => {
                let mut out = [0.0; 3];
                for (o, v) in out.iter_mut().zip(a) {
                    *o = v
                        .as_f64()
                        .ok_or_else(|| Error::bad_value(&path, key, "not a number"))?;
                }
                Ok(out)
            }
            Some(_) => Err(Error::bad_value(&path, key, "expected three numbers")),
        }
    };
    spec.mean = triple("image_mean", CLIP_MEAN)?;
    spec.std = triple("image_std", CLIP_STD)?;
    Ok(spec)
}

/// Reads a checkpoint directory's config.json into a [`ModelSpec`].
pub fn read_model_spec(dir: &Path) -> Result<ModelSpec> {
    let path = dir.join("config.json");
    let json = read_json(&path)?;
    model_spec_from_json(dir, &json)
}

/// [`read_model_spec`] for a config already parsed (`dir` is where relative tower paths
/// and generation_config.json are looked up).
pub fn model_spec_from_json(dir: &Path, json: &Value) -> Result<ModelSpec> {
    let path = dir.join("config.json");
    let json = json.clone();
    let llm = parse_llm_config(&path, &json)?;
    let cfg = ConfigReader::new(&path, &json)?;
    let tower_name = cfg
        .opt_str("mm_vision_tower")?
        .or(cfg.opt_str("vision_tower")?);
    let model_type = cfg.opt_str("model_type")?.unwrap_or_default();
    if model_type == "bluelm_v" {
        return bluelm_v_spec(&path, &cfg, llm);
    }

    let Some(tower_name) = tower_name else {
        if matches!(model_type, "mobilevlm" | "imp" | "imp_qwen2" | "imp_phi3") {
            return Err(Error::MissingConfigKey {
                path: path.clone(),
                key: "mm_vision_tower".into(),
            });
        }
        return Ok(ModelSpec {
            family: Family::TextOnly,
            llm,
            vision: None,
            template: PromptTemplate::Jinja,
        });
    };

    let projector = projector_kind(&path, cfg.opt_str("mm_projector_type")?.unwrap_or("linear"))?;
    let (family, template) = match model_type {
        "mobilevlm" if projector == ProjectorKind::Ldpv2 => {
            (Family::MobileVlmV2, PromptTemplate::VicunaV1)
        }
        "mobilevlm" => (Family::MobileVlm, PromptTemplate::VicunaV1),
        "imp" => (Family::ImpPhi2, PromptTemplate::VicunaV1),
        "imp_qwen2" => (Family::ImpQwen2, PromptTemplate::ImpQwen2),
        "imp_phi3" => (Family::ImpPhi3, PromptTemplate::ImpPhi3),
        other => {
            return Err(Error::UnsupportedArchitecture {
                path: path.clone(),
                arch: format!("{other} with a vision tower"),
                supported: "mobilevlm, imp, imp_qwen2, imp_phi3".into(),
            });
        }
    };

    let tower_dir = local_tower_dir(dir, tower_name);
    let tower = if let Some(inline) = cfg.get("vision_tower_config") {
        parse_tower(&path, inline, tower_name)?
    } else if let Some(tdir) = &tower_dir {
        let tpath = tdir.join("config.json");
        parse_tower(&tpath, &read_json(&tpath)?, tower_name)?
    } else {
        builtin_tower(tower_name).ok_or_else(|| {
            Error::bad_value(
                &path,
                "mm_vision_tower",
                format!(
                    "unknown vision tower `{tower_name}`: put a copy of its directory (config.json and weights) at {}",
                    dir.join(tower_name).display()
                ),
            )
        })?
    };
    let mm_hidden = cfg.usize("mm_hidden_size")?;
    if mm_hidden != tower.hidden_size {
        return Err(cfg_mismatch(&path, mm_hidden, tower.hidden_size));
    }

    let select = cfg
        .get("mm_vision_select_layer")
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| Error::bad_value(&path, "mm_vision_select_layer", "not an integer"))
        })
        .transpose()?
        .unwrap_or(-2);
    // hidden_states has num_layers + 1 entries (the embeddings first).
    let layers_to_run = if select < 0 {
        tower.num_layers as i64 + 1 + select
    } else {
        select
    };
    if layers_to_run < 1 || layers_to_run > tower.num_layers as i64 {
        return Err(Error::bad_value(
            &path,
            "mm_vision_select_layer",
            format!(
                "{select} is outside the tower's {} layers",
                tower.num_layers
            ),
        ));
    }
    let drop_cls = match cfg.opt_str("mm_vision_select_feature")?.unwrap_or("patch") {
        "patch" => true,
        "cls_patch" => false,
        other => {
            return Err(Error::bad_value(
                &path,
                "mm_vision_select_feature",
                format!("`{other}` is not supported (patch, cls_patch)"),
            ));
        }
    };
    if !drop_cls && tower.kind == VisionKind::Clip {
        return Err(Error::bad_value(
            &path,
            "mm_vision_select_feature",
            "cls_patch gives a non-square token grid, which the projectors here cannot take",
        ));
    }

    let mut processor = match family {
        Family::MobileVlm | Family::MobileVlmV2 => {
            clip_processor(tower_dir.as_deref(), tower.image_size)?
        }
        _ => ProcessorSpec {
            size: tower.image_size,
            resize: Resize::Squash,
            pad_fill: None,
            mean: crate::image::SIGLIP_MEAN,
            std: crate::image::SIGLIP_STD,
        },
    };
    match cfg.opt_str("image_aspect_ratio")? {
        Some("pad") => {
            // expand2square's fill: tuple(int(x * 255) for x in image_mean).
            processor.pad_fill = Some(processor.mean.map(|m| (m * 255.0) as u8));
        }
        None | Some("square") => {}
        Some(other) => {
            return Err(Error::bad_value(
                &path,
                "image_aspect_ratio",
                format!("`{other}` is not supported (pad, square)"),
            ));
        }
    }

    let placeholder = match cfg.get("image_token_index").and_then(Value::as_i64) {
        Some(id) if id >= 0 => ImagePlaceholder::VocabId(id as u32),
        _ => ImagePlaceholder::Sentinel,
    };

    Ok(ModelSpec {
        family,
        llm,
        vision: Some(VisionSpec {
            tower,
            layers_to_run: layers_to_run as usize,
            drop_cls,
            projector,
            weights: TowerWeights {
                prefix: TOWER_PREFIX.into(),
                dir: tower_dir,
            },
            processor,
            placeholder,
            tiling: None,
            vision_batch: 1,
        }),
        template,
    })
}

/// Default threshold of the relaxed aspect-ratio matching (the paper's value is not given
/// in the text we could read; 0.1 is our choice, and every config may set its own).
pub const DEFAULT_ALPHA: f64 = 0.1;

/// The `bluelm_v` config (see ARCHITECTURE.md, "The bluelm-v checkpoint format").
fn bluelm_v_spec(
    path: &Path,
    cfg: &ConfigReader,
    llm: crate::model::config::LlmConfig,
) -> Result<ModelSpec> {
    let Some(vision) = cfg.get("vision_config") else {
        return Err(Error::MissingConfigKey {
            path: path.to_path_buf(),
            key: "vision_config".into(),
        });
    };
    let tower = parse_tower(path, vision, "siglip")?;
    let select = cfg
        .get("vision_feature_layer")
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| Error::bad_value(path, "vision_feature_layer", "not an integer"))
        })
        .transpose()?
        .unwrap_or(-2);
    let layers_to_run = if select < 0 {
        tower.num_layers as i64 + 1 + select
    } else {
        select
    };
    if layers_to_run < 1 || layers_to_run > tower.num_layers as i64 {
        return Err(Error::bad_value(
            path,
            "vision_feature_layer",
            format!(
                "{select} is outside the tower's {} layers",
                tower.num_layers
            ),
        ));
    }
    let factor = cfg.opt_usize("downsample")?.unwrap_or(2);
    if !(1..=8).contains(&factor) {
        return Err(Error::bad_value(path, "downsample", "expected 1 to 8"));
    }
    match cfg.opt_str("projector_hidden_act")?.unwrap_or("gelu") {
        "gelu" => {}
        other => {
            return Err(Error::bad_value(
                path,
                "projector_hidden_act",
                format!("`{other}` is not supported (gelu)"),
            ));
        }
    }
    let dynamic = cfg.opt_bool("dynamic_resolution")?.unwrap_or(true);
    let max_tiles = cfg.opt_usize("max_tiles")?.unwrap_or(9);
    if !(1..=64).contains(&max_tiles) {
        return Err(Error::bad_value(path, "max_tiles", "expected 1 to 64"));
    }
    let alpha = match cfg.get("alpha") {
        None => DEFAULT_ALPHA,
        Some(v) => v
            .as_f64()
            .filter(|a| (0.0..1.0).contains(a))
            .ok_or_else(|| Error::bad_value(path, "alpha", "expected a number in [0, 1)"))?,
    };
    let thumbnail = cfg.opt_bool("use_thumbnail")?.unwrap_or(true);
    let vision_batch = cfg.opt_usize("vision_batch")?.unwrap_or(4).clamp(1, 64);
    let placeholder = match cfg.get("image_token_index").and_then(Value::as_i64) {
        Some(id) if id >= 0 => ImagePlaceholder::VocabId(id as u32),
        _ => ImagePlaceholder::Sentinel,
    };
    let processor = ProcessorSpec {
        size: tower.image_size,
        resize: Resize::Squash,
        pad_fill: None,
        mean: crate::image::SIGLIP_MEAN,
        std: crate::image::SIGLIP_STD,
    };
    let tiling = dynamic.then_some(crate::image::tiles::TilingSpec {
        tile: tower.image_size,
        max_tiles,
        alpha,
        thumbnail,
    });
    Ok(ModelSpec {
        family: Family::BlueLmV,
        llm,
        vision: Some(VisionSpec {
            layers_to_run: layers_to_run as usize,
            drop_cls: tower.kind == VisionKind::Clip,
            projector: ProjectorKind::DownsampleMlp { factor },
            weights: TowerWeights {
                prefix: BLUELM_TOWER_PREFIX.into(),
                dir: None,
            },
            tower,
            processor,
            placeholder,
            tiling,
            vision_batch,
        }),
        template: PromptTemplate::BlueLm,
    })
}

/// Where a bluelm-v checkpoint keeps the tower's `vision_model` module.
const BLUELM_TOWER_PREFIX: &str = "model.vision_tower.vision_model";

fn cfg_mismatch(path: &Path, mm_hidden: usize, tower: usize) -> Error {
    Error::bad_value(
        path,
        "mm_hidden_size",
        format!("{mm_hidden} disagrees with the vision tower's width {tower}"),
    )
}
