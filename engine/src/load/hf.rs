//! config.json of Hugging Face checkpoints → [`LlmConfig`].
//!
//! Two generations of the format are in use: checkpoints saved by transformers 4 (what real
//! Hub repos hold) put `rope_theta`, `partial_rotary_factor` and `rope_scaling` at the top
//! level and call the dtype `torch_dtype`; transformers 5 writes a `rope_parameters` object
//! and `dtype`. Both are read here. A missing required key or a value we cannot honour is an
//! error naming the key; keys we do not need are ignored.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::config::{Activation, LlmArch, LlmConfig, RopeConfig, RopeScaling, RopeStyle};

/// The architectures this build can run, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str =
    "llama, qwen2, phi3, phi (Phi-2), mobilevlm, imp, imp_qwen2, imp_phi3";

/// Typed access to a config.json object with errors that name the file and the key.
pub struct ConfigReader<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
    /// Prefix for nested objects in error messages, e.g. `rope_parameters.`.
    prefix: String,
}

impl<'a> ConfigReader<'a> {
    pub fn new(path: &'a Path, value: &'a Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::bad_file(path, "config is not a JSON object"))?;
        Ok(ConfigReader {
            path,
            obj,
            prefix: String::new(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A value that is present and not JSON null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingConfigKey {
            path: self.path.to_path_buf(),
            key: self.key(key),
        }
    }

    fn bad(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::bad_value(self.path, &self.key(key), reason)
    }

    pub fn nested(&self, key: &str) -> Result<Option<ConfigReader<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(obj)) => Ok(Some(ConfigReader {
                path: self.path,
                obj,
                prefix: format!("{}.", self.key(key)),
            })),
            Some(_) => Err(self.bad(key, "expected an object")),
        }
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(key, format!("expected a non-negative integer, got {v}"))),
        }
    }

    /// A required positive integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let n = self.opt_usize(key)?.ok_or_else(|| self.missing(key))?;
        if n == 0 {
            return Err(self.bad(key, "must be positive"));
        }
        Ok(n)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.bad(key, format!("expected a number, got {v}"))),
        }
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, format!("expected true or false, got {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(key, format!("expected a string, got {v}"))),
        }
    }

    /// A token id or a list of them (`eos_token_id` may be either).
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| as_id(v).ok_or_else(|| self.bad(key, format!("bad token id {v}"))))
                .collect(),
            Some(v) => as_id(v)
                .map(|id| vec![id])
                .ok_or_else(|| self.bad(key, format!("bad token id {v}"))),
        }
    }
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))
}

/// The language-model architecture of a config.json, from `model_type` (or, without one,
/// `architectures[0]`). The multimodal wrappers (MobileVLM, Imp) name their own types.
pub fn detect_arch(path: &Path, cfg: &ConfigReader) -> Result<LlmArch> {
    let model_type = cfg.opt_str("model_type")?;
    let first_arch = cfg
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str());
    let arch = match (model_type, first_arch) {
        (Some("llama" | "mobilevlm" | "bluelm_v"), _) | (None, Some("LlamaForCausalLM")) => {
            LlmArch::Llama
        }
        (Some("qwen2" | "imp_qwen2"), _) | (None, Some("Qwen2ForCausalLM")) => LlmArch::Qwen2,
        (Some("phi3" | "imp_phi3"), _) | (None, Some("Phi3ForCausalLM")) => LlmArch::Phi3,
        (Some("phi" | "imp"), _) | (None, Some("PhiForCausalLM")) => LlmArch::Phi2,
        (None, None) => {
            return Err(Error::MissingConfigKey {
                path: path.to_path_buf(),
                key: "model_type".into(),
            });
        }
        (Some(other), _) | (None, Some(other)) => {
            return Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES.to_string(),
            });
        }
    };
    // The original phi-msft layout (`n_embd`, fused `Wqkv`) that early Imp revisions used.
    if arch == LlmArch::Phi2 && cfg.get("n_embd").is_some() {
        return Err(Error::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: "phi-msft (n_embd / fused Wqkv layout)".into(),
            supported: "the transformers Phi layout (hidden_size, separate q/k/v and dense); download a newer revision of the checkpoint".into(),
        });
    }
    Ok(arch)
}

/// Parses the language-model part of a config.json.
pub fn parse_llm_config(path: &Path, value: &Value) -> Result<LlmConfig> {
    let cfg = ConfigReader::new(path, value)?;
    let arch = detect_arch(path, &cfg)?;

    if let Some(q) = cfg.nested("quantization_config")? {
        let method = q.opt_str("quant_method")?.unwrap_or("unknown");
        return Err(Error::bad_value(
            path,
            "quantization_config",
            format!(
                "checkpoints quantised with `{method}` are not supported; use an f16/bf16/f32 checkpoint or a GGUF file"
            ),
        ));
    }
    if arch == LlmArch::Phi2 && cfg.opt_bool("qk_layernorm")?.unwrap_or(false) {
        return Err(cfg.bad(
            "qk_layernorm",
            "Phi models with q/k LayerNorm are not supported",
        ));
    }

    let hidden_size = cfg.usize("hidden_size")?;
    let num_heads = cfg.usize("num_attention_heads")?;
    let num_kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(cfg.bad(
            "num_key_value_heads",
            format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
        ));
    }
    let head_dim = match cfg.opt_usize("head_dim")? {
        Some(d) => d,
        None => {
            if hidden_size % num_heads != 0 {
                return Err(cfg.bad(
                    "num_attention_heads",
                    format!("{num_heads} does not divide hidden_size {hidden_size}"),
                ));
            }
            hidden_size / num_heads
        }
    };
    let max_position_embeddings = cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    // transformers' per-class default partial rotary factor: Phi's is 0.5, the others 1.
    let default_partial = if arch == LlmArch::Phi2 { 0.5 } else { 1.0 };
    let rope = parse_rope(&cfg, head_dim, default_partial)?;

    let default_act = if arch == LlmArch::Phi2 {
        "gelu_new"
    } else {
        "silu"
    };
    let act_name = cfg.opt_str("hidden_act")?.unwrap_or(default_act);
    let activation = Activation::from_hf_name(act_name).ok_or_else(|| {
        cfg.bad(
            "hidden_act",
            format!("activation `{act_name}` is not supported"),
        )
    })?;

    // Sliding-window attention: Phi-3 uses it; Qwen2 only when `use_sliding_window`.
    let sliding_window = match arch {
        LlmArch::Phi3 => cfg.opt_usize("sliding_window")?,
        LlmArch::Qwen2 if cfg.opt_bool("use_sliding_window")?.unwrap_or(false) => {
            return Err(cfg.bad(
                "use_sliding_window",
                "Qwen2 sliding-window layers are not supported",
            ));
        }
        _ => None,
    }
    .filter(|&w| w < max_position_embeddings);

    let (qkv_bias, o_bias, mlp_bias, lm_head_bias) = match arch {
        LlmArch::Llama => {
            let attention = cfg.opt_bool("attention_bias")?.unwrap_or(false);
            (
                attention,
                attention,
                cfg.opt_bool("mlp_bias")?.unwrap_or(false),
                false,
            )
        }
        LlmArch::Qwen2 => (true, false, false, false),
        LlmArch::Phi3 => (false, false, false, false),
        LlmArch::Phi2 => (true, true, true, true),
    };
    let norm_key = if arch == LlmArch::Phi2 {
        "layer_norm_eps"
    } else {
        "rms_norm_eps"
    };
    let default_eps = match arch {
        LlmArch::Phi2 | LlmArch::Phi3 => 1e-5,
        _ => 1e-6,
    };

    let mut eos_token_ids = cfg.token_ids("eos_token_id")?;
    // generation_config.json may list more stop ids (e.g. chat models' end-of-turn token).
    if let Some(dir) = path.parent() {
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let gen_json = read_json(&gen_path)?;
            let gen_cfg = ConfigReader::new(&gen_path, &gen_json)?;
            for id in gen_cfg.token_ids("eos_token_id")? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
    }

    Ok(LlmConfig {
        arch,
        vocab_size: cfg.usize("vocab_size")?,
        hidden_size,
        intermediate_size: cfg.usize("intermediate_size")?,
        num_layers: cfg.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings,
        norm_eps: cfg.opt_f32(norm_key)?.unwrap_or(default_eps),
        rope,
        activation,
        tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        qkv_bias,
        o_bias,
        mlp_bias,
        lm_head_bias,
        sliding_window,
        bos_token_id: cfg.token_ids("bos_token_id")?.first().copied(),
        eos_token_ids,
        dtype: cfg
            .opt_str("dtype")?
            .or(cfg.opt_str("torch_dtype")?)
            .map(str::to_string),
    })
}

/// RoPE settings from either `rope_parameters` (transformers 5) or the top-level keys
/// `rope_theta` / `partial_rotary_factor` / `rope_scaling` (transformers 4).
fn parse_rope(cfg: &ConfigReader, head_dim: usize, default_partial: f32) -> Result<RopeConfig> {
    let params = cfg.nested("rope_parameters")?;
    let legacy_scaling = cfg.nested("rope_scaling")?;

    // transformers' default when a v4 config has no rope_theta.
    let theta = match &params {
        Some(p) => p.f32("rope_theta")?,
        None => cfg.opt_f32("rope_theta")?.unwrap_or(10000.0),
    };
    let partial = match &params {
        Some(p) => p.opt_f32("partial_rotary_factor")?,
        None => None,
    }
    .or(cfg.opt_f32("partial_rotary_factor")?)
    .unwrap_or(default_partial);
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(cfg.bad(
            "partial_rotary_factor",
            format!("{partial} is not in (0, 1]"),
        ));
    }
    let rotary_dim = (head_dim as f32 * partial) as usize;
    if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        return Err(cfg.bad(
            "partial_rotary_factor",
            format!("gives an odd or empty rotary dimension {rotary_dim} for head_dim {head_dim}"),
        ));
    }

    // The scaling description: the v5 object itself, or the v4 `rope_scaling` object.
    let scaling_src = match (&params, &legacy_scaling) {
        (Some(p), _) => Some(p),
        (None, Some(s)) => Some(s),
        (None, None) => None,
    };
    let scaling = match scaling_src {
        None => RopeScaling::None,
        Some(s) => {
            let kind = s
                .opt_str("rope_type")?
                .or(s.opt_str("type")?)
                .unwrap_or("default");
            match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear {
                    factor: s.f32("factor")?,
                },
                "llama3" => RopeScaling::Llama3 {
                    factor: s.f32("factor")?,
                    low_freq_factor: s.f32("low_freq_factor")?,
                    high_freq_factor: s.f32("high_freq_factor")?,
                    original_max_position_embeddings: s.f32("original_max_position_embeddings")?,
                },
                other => {
                    return Err(s.bad(
                        "rope_type",
                        format!("RoPE scaling `{other}` is not supported (supported: default, linear, llama3)"),
                    ));
                }
            }
        }
    };
    Ok(RopeConfig {
        theta,
        rotary_dim,
        scaling,
        style: RopeStyle::NeoX,
    })
}

/// The config.json inside a checkpoint directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<LlmConfig> {
        parse_llm_config(Path::new("/nonexistent/config.json"), &v)
    }

    /// MobileLLaMA-1.4B as saved by transformers 4 (top-level rope_theta, torch_dtype).
    fn v4_llama() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
            "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "transformers_version": "4.33.1"
        })
    }

    #[test]
    fn reads_transformers4_style() {
        let c = parse(v4_llama()).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.rope.theta, 10000.0);
        assert_eq!(c.rope.rotary_dim, 128);
        assert_eq!(c.rope.scaling, RopeScaling::None);
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn reads_transformers5_style_and_v4_scaling() {
        let mut v = v4_llama();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("torch_dtype");
        o.insert("dtype".into(), json!("float16"));
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}),
        );
        let c = parse(v).unwrap();
        assert_eq!(c.rope.theta, 500000.0);
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.dtype.as_deref(), Some("float16"));

        let mut v = v4_llama();
        v["rope_scaling"] = json!({"type": "linear", "factor": 4.0});
        v["partial_rotary_factor"] = json!(0.5);
        let c = parse(v).unwrap();
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(c.rope.rotary_dim, 64);
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = v4_llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        match parse(v) {
            Err(Error::MissingConfigKey { key, .. }) => assert_eq!(key, "hidden_size"),
            other => panic!("{other:?}"),
        }

        let mut v = v4_llama();
        v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        match parse(v) {
            Err(Error::BadConfigValue { key, reason, .. }) => {
                assert_eq!(key, "rope_scaling.rope_type");
                assert!(reason.contains("yarn"), "{reason}");
            }
            other => panic!("{other:?}"),
        }

        let mut v = v4_llama();
        v["model_type"] = json!("mamba");
        assert!(
            matches!(parse(v), Err(Error::UnsupportedArchitecture { arch, .. }) if arch == "mamba")
        );

        let mut v = v4_llama();
        v["num_key_value_heads"] = json!(3);
        assert!(
            matches!(parse(v), Err(Error::BadConfigValue { key, .. }) if key == "num_key_value_heads")
        );

        let mut v = v4_llama();
        v["hidden_size"] = json!("big");
        assert!(matches!(parse(v), Err(Error::BadConfigValue { key, .. }) if key == "hidden_size"));

        let mut v = v4_llama();
        v["quantization_config"] = json!({"quant_method": "gptq"});
        assert!(
            matches!(parse(v), Err(Error::BadConfigValue { key, .. }) if key == "quantization_config")
        );
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() {
        let rope = RopeConfig {
            theta: 500000.0,
            rotary_dim: 128,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
            style: RopeStyle::NeoX,
        };
        let f = rope.inv_freq();
        assert_eq!(f[0], 1.0);
        let plain = RopeConfig {
            scaling: RopeScaling::None,
            ..rope.clone()
        }
        .inv_freq();
        assert!((f[63] - plain[63] / 8.0).abs() < 1e-12);
    }
}
