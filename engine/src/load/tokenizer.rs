//! Tokenizers of Hugging Face checkpoints: tokenizer.json through the `tokenizers` crate,
//! plus what tokenizer_config.json / chat_template.jinja say about special tokens and the
//! chat template.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::load::hf::read_json;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<ChatTemplate>,
}

/// `"<s>"` or `{"content": "<s>", ...}` (an AddedToken), as tokenizer_config.json writes them.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` and
    /// `chat_template.jinja` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer {
                path,
                reason: "file not found (only tokenizer.json tokenizers are supported for Hugging Face directories)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            Some(read_json(&cfg_path)?)
        } else {
            None
        };
        let bos_token = token_text(cfg.as_ref().and_then(|c| c.get("bos_token")));
        let eos_token = token_text(cfg.as_ref().and_then(|c| c.get("eos_token")));

        // transformers 5 writes the template to its own file; older checkpoints keep it in
        // tokenizer_config.json, as a string or as a list of named templates.
        let jinja_path = dir.join("chat_template.jinja");
        let (source, template_path) = if jinja_path.exists() {
            let s = std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?;
            (Some(s), jinja_path)
        } else {
            let s = match cfg.as_ref().and_then(|c| c.get("chat_template")) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or(list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            };
            (s, cfg_path)
        };
        let chat_template = match source {
            Some(src) => Some(
                ChatTemplate::new(src, bos_token.clone(), eos_token.clone())
                    .map_err(|e| Error::Template(format!("{}: {e}", template_path.display())))?,
            ),
            None => None,
        };

        Ok(Tokenizer {
            inner,
            path,
            bos_token,
            eos_token,
            chat_template,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Token ids of `text`. `add_special_tokens` applies the tokenizer's post-processor
    /// (e.g. a LLaMA BOS); it is off for text already rendered by a chat template, which
    /// writes its own special tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
