//! Offline quantisation (`pocketvlm quantize`): a Hugging Face checkpoint directory in, and
//! out either the same directory layout with block-format safetensors (loaded back exactly
//! as quantise-on-load would build the model) or a llama.cpp GGUF file.
//!
//! Which tensors change, by role (the same rules as loading with `--quant`):
//! - language-model matrices (linear layers, embeddings) → the LLM format; the output head
//!   (or embeddings tied to it) stays at 8 bits when the rest goes to 4 bits;
//! - vision tower and projector matrices (incl. 1×1 convolutions) → the vision format;
//! - norms, biases, the patch embedding, position/class embeddings, depthwise kernels →
//!   kept as stored;
//! - matrices whose rows are not whole 32-value blocks → kept as stored.

use std::path::Path;

use crate::error::{Error, Result};
use crate::load::gguf::{GgmlType, Value, Writer};
use crate::load::hf::{ConfigReader, read_json};
use crate::load::safetensors::{Checkpoint, write_safetensors};
use crate::load::spec::read_model_spec;
use crate::model::config::LlmArch;
use crate::quant::convert_matrix;
use crate::tensor::{DType, HostTensor};

/// What a quantisation run did.
#[derive(Debug, Default)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub converted: usize,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

fn is_vision(name: &str) -> bool {
    name.starts_with("model.vision_tower.") || name.starts_with("model.mm_projector.")
}

/// The format a tensor of `shape` stored as `stored` ends up in when `llm` / `vision`
/// formats are asked for (`None` when it is kept as stored), and the shape it is used with.
pub fn planned_format(
    name: &str,
    shape: &[usize],
    stored: DType,
    llm: Option<DType>,
    vision: Option<DType>,
    tied: bool,
) -> (Option<DType>, Vec<usize>) {
    let kept_as_stored = name.ends_with("position_embedding.weight")
        || name.ends_with("patch_embedding.weight")
        || !name.ends_with(".weight");
    let squeezed: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
    let is_pointwise = shape.len() == 4 && squeezed.len() == 2 && shape[2..] == [1, 1];
    if kept_as_stored || (shape.len() != 2 && !is_pointwise) {
        return (None, shape.to_vec());
    }
    let shape = if is_pointwise {
        squeezed
    } else {
        shape.to_vec()
    };
    let target = if is_vision(name) { vision } else { llm };
    let is_head = name == "lm_head.weight" || (tied && name == "model.embed_tokens.weight");
    let target = match target {
        Some(DType::Q4_0 | DType::Q4_1) if is_head && stored.is_quantized() => None,
        Some(DType::Q4_0 | DType::Q4_1) if is_head => Some(DType::Q8_0),
        other => other,
    };
    // Rows that are not whole blocks keep their format (see `convert_matrix`).
    let cols = shape.last().copied().unwrap_or(1);
    let target = target.filter(|t| cols.is_multiple_of(t.block_size()));
    (target, shape)
}

/// The tensor `name` as stored after quantisation to `llm` / `vision`.
fn convert(
    name: &str,
    t: HostTensor,
    llm: Option<DType>,
    vision: Option<DType>,
    tied: bool,
) -> HostTensor {
    let (target, shape) = planned_format(name, &t.shape, t.dtype, llm, vision, tied);
    match target {
        None if shape == t.shape => t,
        None => t.reshape(shape),
        Some(_) => convert_matrix(t.reshape(shape), target),
    }
}

/// Copies everything but weight files from `src` to `dst` (configs, tokenizer, a local
/// vision-tower folder).
fn copy_companions(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let weights = name.ends_with(".safetensors")
            || name.ends_with(".bin")
            || name.ends_with(".index.json")
            || name.ends_with(".gguf");
        if path.is_dir() {
            copy_companions(&path, &dst.join(&name))?;
            // A tower folder keeps its own weights.
            for inner in std::fs::read_dir(&path)
                .map_err(|e| Error::io(&path, e))?
                .flatten()
            {
                let n = inner.file_name().to_string_lossy().to_string();
                if n.ends_with(".safetensors") {
                    std::fs::copy(inner.path(), dst.join(&name).join(&n))
                        .map_err(|e| Error::io(&inner.path(), e))?;
                }
            }
        } else if !weights {
            std::fs::copy(&path, dst.join(&name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Quantises the checkpoint in `src` into a new checkpoint directory `dst`.
pub fn quantize_checkpoint(
    src: &Path,
    dst: &Path,
    llm: DType,
    vision: Option<DType>,
) -> Result<QuantizeReport> {
    if dst.exists()
        && std::fs::read_dir(dst)
            .map_err(|e| Error::io(dst, e))?
            .next()
            .is_some()
    {
        return Err(Error::InvalidArgument(format!(
            "{} exists and is not empty; choose a new output directory",
            dst.display()
        )));
    }
    let spec = read_model_spec(src)?;
    let ckpt = Checkpoint::open(src)?;
    let mut names: Vec<&str> = ckpt.names().collect();
    names.sort_unstable();
    let mut report = QuantizeReport::default();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let t = ckpt.tensor(name)?;
        report.tensors += 1;
        report.bytes_in += t.bytes().len();
        let before = t.dtype;
        let t = convert(name, t, Some(llm), vision, spec.llm.tie_word_embeddings);
        report.converted += usize::from(t.dtype != before);
        report.bytes_out += t.bytes().len();
        out.push((name.to_string(), t));
    }
    copy_companions(src, dst)?;
    write_safetensors(&dst.join("model.safetensors"), &out)?;
    Ok(report)
}

/// llama.cpp's `LlamaFileType` for a checkpoint mostly in `dtype`.
fn file_type(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::BF16 => 32,
    }
}

/// llama.cpp's row order for LLaMA Q and K: within each head, rotary pairs made adjacent
/// (`convert_hf_to_gguf.py`'s `permute`). Rows are whole (blocks run along them), so this
/// works on any format.
fn permute_rows(t: &HostTensor, heads: usize) -> HostTensor {
    let (rows, _) = t.rows_cols();
    let rb = t.row_bytes();
    let hd = rows / heads;
    let src = t.bytes();
    let mut out = vec![0u8; src.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let new = h * hd + 2 * i + j;
                let old = h * hd + j * (hd / 2) + i;
                out[new * rb..(new + 1) * rb].copy_from_slice(&src[old * rb..(old + 1) * rb]);
            }
        }
    }
    HostTensor::new(
        t.dtype,
        t.shape.clone(),
        crate::tensor::Storage::from_bytes(&out),
    )
}

/// The llama.cpp name of an HF LLaMA tensor.
fn gguf_name(name: &str) -> Option<String> {
    let (stem, kind) = name.rsplit_once('.')?;
    let mapped = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("model.layers.")?;
            let (layer, module) = rest.split_once('.')?;
            let part = match module {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{layer}.{part}")
        }
    };
    Some(format!("{mapped}.{kind}"))
}

fn strings(v: Vec<String>) -> Value {
    Value::Array(v.into_iter().map(Value::String).collect())
}

/// `tokenizer.ggml.*` metadata from a checkpoint directory's tokenizer files.
fn tokenizer_metadata(dir: &Path, w: &mut Writer) -> Result<()> {
    let json_path = dir.join("tokenizer.json");
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        Some(read_json(&cfg_path)?)
    } else {
        None
    };
    let special_text = |key: &str| -> Option<String> {
        match cfg.as_ref()?.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let mut tokens: Vec<String>;
    let mut types: Vec<i32>;
    if json_path.is_file() {
        let tj = read_json(&json_path)?;
        let model = tj
            .get("model")
            .ok_or_else(|| Error::bad_file(&json_path, "no model"))?;
        if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
            return Err(Error::bad_file(
                &json_path,
                "only BPE tokenizer.json files can be written to GGUF",
            ));
        }
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .ok_or_else(|| Error::bad_file(&json_path, "no vocab"))?;
        let mut by_id: Vec<(u64, String, i32)> = vocab
            .iter()
            .filter_map(|(t, id)| id.as_u64().map(|id| (id, t.clone(), 1)))
            .collect();
        for added in tj
            .get("added_tokens")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(content)) = (
                added.get("id").and_then(|i| i.as_u64()),
                added.get("content").and_then(|c| c.as_str()),
            ) else {
                continue;
            };
            let special = added
                .get("special")
                .and_then(|s| s.as_bool())
                .unwrap_or(false);
            let ty = if special { 3 } else { 4 };
            match by_id.iter_mut().find(|(i, _, _)| *i == id) {
                Some(entry) => entry.2 = ty,
                None => by_id.push((id, content.to_string(), ty)),
            }
        }
        by_id.sort_by_key(|e| e.0);
        if by_id.iter().enumerate().any(|(i, e)| e.0 != i as u64) {
            return Err(Error::bad_file(&json_path, "token ids are not contiguous"));
        }
        tokens = by_id.iter().map(|e| e.1.clone()).collect();
        types = by_id.iter().map(|e| e.2).collect();
        let merges: Vec<String> = model
            .get("merges")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .filter_map(|m| match m {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(pair) => Some(format!(
                    "{} {}",
                    pair.first()?.as_str()?,
                    pair.get(1)?.as_str()?
                )),
                _ => None,
            })
            .collect();
        w.metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
        w.metadata("tokenizer.ggml.pre", Value::String("gpt-2".into()));
        w.metadata("tokenizer.ggml.merges", strings(merges));
    } else if dir.join("tokenizer.model").is_file() {
        let model = crate::load::spm::SpmModel::from_file(&dir.join("tokenizer.model"))?;
        tokens = model.pieces().iter().map(|p| p.piece.clone()).collect();
        types = model.pieces().iter().map(|p| p.kind.code()).collect();
        let scores = model.pieces().iter().map(|p| Value::F32(p.score)).collect();
        w.metadata("tokenizer.ggml.model", Value::String("llama".into()));
        w.metadata("tokenizer.ggml.scores", Value::Array(scores));
    } else {
        return Err(Error::Tokenizer {
            path: json_path,
            reason: "no tokenizer.json or tokenizer.model to write into the GGUF".into(),
        });
    }
    let id_of = |text: Option<String>| text.and_then(|t| tokens.iter().position(|x| *x == t));
    for (key, name) in [
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("unknown", "unk_token"),
        ("padding", "pad_token"),
    ] {
        if let Some(id) = id_of(special_text(name)) {
            w.metadata(
                &format!("tokenizer.ggml.{key}_token_id"),
                Value::U32(id as u32),
            );
        }
    }
    let flag = |key: &str| {
        cfg.as_ref()
            .and_then(|c| c.get(key))
            .and_then(|v| v.as_bool())
    };
    if let Some(b) = flag("add_bos_token") {
        w.metadata("tokenizer.ggml.add_bos_token", Value::Bool(b));
    }
    if let Some(b) = flag("add_eos_token") {
        w.metadata("tokenizer.ggml.add_eos_token", Value::Bool(b));
    }
    tokens.shrink_to_fit();
    w.metadata("tokenizer.ggml.tokens", strings(tokens));
    w.metadata(
        "tokenizer.ggml.token_type",
        Value::Array(types.drain(..).map(Value::I32).collect()),
    );
    let template = dir.join("chat_template.jinja");
    let template = if template.is_file() {
        Some(std::fs::read_to_string(&template).map_err(|e| Error::io(&template, e))?)
    } else {
        cfg.as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
    };
    if let Some(t) = template {
        w.metadata("tokenizer.chat_template", Value::String(t));
    }
    Ok(())
}

/// Writes the language model of a LLaMA-architecture checkpoint as a llama.cpp GGUF file:
/// `llama.*` metadata, Q/K rows permuted, the tokenizer and chat template.
pub fn write_gguf(src: &Path, out: &Path, dtype: DType) -> Result<QuantizeReport> {
    let spec = read_model_spec(src)?;
    let cfg = &spec.llm;
    if cfg.arch != LlmArch::Llama {
        return Err(Error::InvalidArgument(format!(
            "GGUF output is for LLaMA-architecture models; this one is {}",
            cfg.arch.name()
        )));
    }
    if cfg.qkv_bias || cfg.o_bias || cfg.mlp_bias || cfg.head_dim * cfg.num_heads != cfg.hidden_size
    {
        return Err(Error::InvalidArgument(
            "llama.cpp's llama architecture has no attention/MLP biases and head_dim = hidden / heads".into(),
        ));
    }
    let ckpt = Checkpoint::open(src)?;
    let mut w = Writer::default();
    let name = std::fs::read_to_string(src.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            ConfigReader::new(src, &v)
                .ok()?
                .opt_str("_name_or_path")
                .ok()
                .flatten()
                .map(str::to_string)
        })
        .unwrap_or_else(|| {
            src.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        });
    w.metadata("general.architecture", Value::String("llama".into()));
    w.metadata("general.name", Value::String(name));
    w.metadata("general.file_type", Value::U32(file_type(dtype)));
    w.metadata("general.quantization_version", Value::U32(2));
    let u = |v: usize| Value::U32(v as u32);
    w.metadata("llama.context_length", u(cfg.max_position_embeddings));
    w.metadata("llama.embedding_length", u(cfg.hidden_size));
    w.metadata("llama.block_count", u(cfg.num_layers));
    w.metadata("llama.feed_forward_length", u(cfg.intermediate_size));
    w.metadata("llama.rope.dimension_count", u(cfg.rope.rotary_dim));
    w.metadata("llama.attention.head_count", u(cfg.num_heads));
    w.metadata("llama.attention.head_count_kv", u(cfg.num_kv_heads));
    w.metadata(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(cfg.norm_eps),
    );
    w.metadata("llama.rope.freq_base", Value::F32(cfg.rope.theta));
    w.metadata("llama.vocab_size", u(cfg.vocab_size));
    if let crate::model::config::RopeScaling::Linear { factor } = cfg.rope.scaling {
        w.metadata("llama.rope.scaling.type", Value::String("linear".into()));
        w.metadata("llama.rope.scaling.factor", Value::F32(factor));
    } else if cfg.rope.scaling != crate::model::config::RopeScaling::None {
        return Err(Error::InvalidArgument(
            "only linear RoPE scaling can be written to GGUF".into(),
        ));
    }
    tokenizer_metadata(src, &mut w)?;

    let mut names: Vec<&str> = ckpt.names().filter(|n| !is_vision(n)).collect();
    names.sort_unstable();
    let mut report = QuantizeReport::default();
    for name in names {
        let Some(gname) = gguf_name(name) else {
            continue;
        };
        let t = ckpt.tensor(name)?;
        report.tensors += 1;
        report.bytes_in += t.bytes().len();
        let before = t.dtype;
        let mut t = convert(name, t, Some(dtype), None, cfg.tie_word_embeddings);
        // ggml keeps 1-D tensors (norms) in f32.
        if t.shape.len() == 1 && t.dtype != DType::F32 {
            t = t.to_f32();
        }
        if name.ends_with("self_attn.q_proj.weight") {
            t = permute_rows(&t, cfg.num_heads);
        } else if name.ends_with("self_attn.k_proj.weight") {
            t = permute_rows(&t, cfg.num_kv_heads);
        }
        report.converted += usize::from(t.dtype != before);
        report.bytes_out += t.bytes().len();
        w.tensor(
            &gname,
            &t.shape,
            GgmlType::from_dtype(t.dtype),
            t.bytes().to_vec(),
        );
    }
    let bytes = w.to_bytes();
    let tmp = out.with_extension("gguf.tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| Error::io(out, e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_makes_rotary_pairs_adjacent() {
        // One head of 4 rows (head_dim 4): HF pairs (0, 2) and (1, 3) become (0, 1), (2, 3).
        let t = HostTensor::from_f32(vec![4, 1], &[0.0, 1.0, 2.0, 3.0]);
        let p = permute_rows(&t, 1);
        assert_eq!(p.to_f32_vec(), vec![0.0, 2.0, 1.0, 3.0]);
    }

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.o_proj.weight").unwrap(),
            "blk.3.attn_output.weight"
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").unwrap(),
            "token_embd.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        // Round trip with the reader's mapping.
        for n in [
            "model.layers.0.mlp.down_proj.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            let g = gguf_name(n).unwrap();
            assert_eq!(
                crate::load::gguf_model::hf_name_of_llm_tensor(&g).unwrap(),
                n
            );
        }
    }
}
