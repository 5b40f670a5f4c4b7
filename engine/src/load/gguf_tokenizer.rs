//! Tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.*`), the way transformers'
//! GGUF integration rebuilds them:
//! - `gpt2`: a byte-level BPE from `tokens` (spelled in the byte alphabet) and `merges`,
//!   GPT-2's pre-tokenizer (or the split regex that `tokenizer.ggml.pre` names), control
//!   tokens added as special tokens and user-defined ones as plain added tokens;
//! - `llama`: a SentencePiece BPE from `tokens`, `scores` and `token_type`, with the slow
//!   `LlamaTokenizer` rules.
//!
//! `tokenizer.chat_template` becomes the chat template.

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::{GgufFile, Value};
use super::spm::{
    AddedToken as SpmAddedToken, LlamaTokenizerConfig, PieceType, SpmModel, SpmOptions, SpmPiece,
};
use super::tokenizer::Tokenizer;
use crate::chat::ChatTemplate;
use crate::error::{Error, Result};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte → printable character table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('?')
        };
    }
    table
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let bad = || Error::Tokenizer {
        path: file.path().to_path_buf(),
        reason: format!("`{key}` is missing or not a list of strings"),
    };
    file.get(key)
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_str().ok_or_else(bad))
        .collect()
}

fn token_types(file: &GgufFile, n: usize) -> Vec<i64> {
    match file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        Some(a) if a.len() == n => a
            .iter()
            .map(|v| v.as_f64().map_or(1, |x| x as i64))
            .collect(),
        _ => vec![1; n],
    }
}

fn special_id(file: &GgufFile, key: &str) -> Option<usize> {
    file.get(&format!("tokenizer.ggml.{key}_token_id"))
        .and_then(Value::as_u64)
        .map(|v| v as usize)
}

fn gpt2(file: &GgufFile) -> Result<Tokenizer> {
    let err = |reason: String| Error::Tokenizer {
        path: file.path().to_path_buf(),
        reason,
    };
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab: tokenizers::models::bpe::Vocab = Default::default();
    for (i, t) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, i as u32);
    }
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let split = match file.get("tokenizer.ggml.pre").and_then(Value::as_str) {
        Some("llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx") => Some(LLAMA3_SPLIT),
        Some("qwen2" | "deepseek-r1-qwen") => Some(QWEN2_SPLIT),
        _ => None,
    };
    match split {
        None => {
            inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        Some(pattern) => {
            let split = Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(e.to_string()))?;
            inner.with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ])));
        }
    }
    inner.with_decoder(Some(ByteLevel::default()));
    let types = token_types(file, tokens.len());
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(t, &ty)| ty == 3 && in_alphabet(t))
        .map(|(t, _)| AddedToken::from(t.to_string(), true))
        .collect();
    inner
        .add_special_tokens(control)
        .map_err(|e| err(e.to_string()))?;
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|&(_, &ty)| ty == 4)
        .map(|(t, _)| AddedToken::from(t.to_string(), false))
        .collect();
    inner.add_tokens(user).map_err(|e| err(e.to_string()))?;
    let name = |key| {
        special_id(file, key)
            .and_then(|i| tokens.get(i))
            .map(|t| t.to_string())
    };
    Ok(Tokenizer::from_tokenizers(
        inner,
        name("bos"),
        name("eos"),
        file.path(),
    ))
}

fn sentencepiece(file: &GgufFile) -> Result<Tokenizer> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let scores: Vec<f32> = match file.get("tokenizer.ggml.scores").and_then(Value::as_array) {
        Some(a) if a.len() == tokens.len() => {
            a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
        }
        _ => vec![0.0; tokens.len()],
    };
    let types = token_types(file, tokens.len());
    let pieces = tokens
        .iter()
        .zip(&scores)
        .zip(&types)
        .map(|((t, &s), &ty)| {
            SpmPiece::new(*t, s, PieceType::from_code(ty).unwrap_or(PieceType::Normal))
        })
        .collect();
    let mut options = SpmOptions::llama();
    if let Some(prefix) = file
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
    {
        options.add_dummy_prefix = prefix;
    }
    let model = SpmModel::from_parts(pieces, options).map_err(|e| Error::Tokenizer {
        path: file.path().to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = |key| {
        special_id(file, key)
            .and_then(|i| tokens.get(i))
            .map(|t| SpmAddedToken::special(*t))
    };
    let flag = |key: &str, default| {
        file.get(&format!("tokenizer.ggml.{key}"))
            .and_then(Value::as_bool)
            .unwrap_or(default)
    };
    let config = LlamaTokenizerConfig {
        bos_token: token("bos"),
        eos_token: token("eos"),
        unk_token: token("unknown"),
        pad_token: token("padding"),
        add_bos_token: flag("add_bos_token", true),
        add_eos_token: flag("add_eos_token", false),
        ..LlamaTokenizerConfig::default()
    };
    Ok(Tokenizer::from_sentencepiece(model, config, file.path()))
}

/// The tokenizer (and chat template) a GGUF file's metadata describes.
pub fn tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Tokenizer {
            path: file.path().to_path_buf(),
            reason: "no tokenizer.ggml.model".into(),
        })?;
    let mut tok = match model {
        "gpt2" => gpt2(file)?,
        "llama" => sentencepiece(file)?,
        other => {
            return Err(Error::Tokenizer {
                path: file.path().to_path_buf(),
                reason: format!("tokenizer model `{other}` is not supported (gpt2, llama)"),
            });
        }
    };
    if let Some(src) = file.get("tokenizer.chat_template").and_then(Value::as_str) {
        let template = ChatTemplate::new(
            src.to_string(),
            tok.bos_token.clone(),
            tok.eos_token.clone(),
        )
        .map_err(|e| Error::Template(format!("{}: {e}", file.path().display())))?;
        tok.chat_template = Some(template);
    }
    Ok(tok)
}
