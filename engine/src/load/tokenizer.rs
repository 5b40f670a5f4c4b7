//! Tokenizers of Hugging Face checkpoints, in the three layouts they come in:
//!
//! - `tokenizer.json`, through the `tokenizers` crate (what transformers 5 runs);
//! - `tokenizer.model` (SentencePiece), with the rules of transformers 4's slow
//!   `LlamaTokenizer`, which MobileVLM's reference code uses ([`crate::load::spm`]);
//! - GPT-2 style `vocab.json` + `merges.txt` (+ `added_tokens.json`), turned into the
//!   byte-level BPE that transformers builds from them with the `tokenizers` library.
//!
//! tokenizer_config.json (and special_tokens_map.json) add the special tokens and flags;
//! the chat template comes from chat_template.jinja or tokenizer_config.json.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::load::hf::read_json;
use crate::load::spm::{AddedToken, LlamaSlowTokenizer, LlamaTokenizerConfig, SpmModel};

/// Which file a checkpoint directory's tokenizer is read from when it has several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenizerPreference {
    /// tokenizer.json, else tokenizer.model, else vocab.json + merges.txt.
    #[default]
    Auto,
    /// tokenizer.model (the slow `LlamaTokenizer`) whenever it is there, even next to a
    /// tokenizer.json: MobileVLM's reference implementation uses the slow tokenizer, which
    /// differs from the fast one around special tokens.
    SentencePiece,
}

/// The kind of tokenizer that was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// tokenizer.json.
    HuggingFaceJson,
    /// tokenizer.model with transformers 4's slow `LlamaTokenizer` rules.
    SentencePiece,
    /// vocab.json + merges.txt.
    Gpt2Bpe,
}

enum Backend {
    Hf {
        inner: Box<tokenizers::Tokenizer>,
        /// transformers' `clean_up_tokenization_spaces`, which transformers 5 applies only
        /// to non-BPE models.
        clean_up: bool,
    },
    Spm(Box<LlamaSlowTokenizer>),
}

pub struct Tokenizer {
    backend: Backend,
    kind: TokenizerKind,
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

/// An AddedToken from a config value: a bare string gets `special`'s defaults, a dict its
/// own flags (missing ones as in `tokenizers.AddedToken`).
fn added_token(v: &Value, special: bool) -> Option<AddedToken> {
    match v {
        Value::String(s) => Some(if special {
            AddedToken::special(s.clone())
        } else {
            AddedToken::plain(s.clone())
        }),
        Value::Object(o) => {
            let flag = |k: &str, d: bool| o.get(k).and_then(Value::as_bool).unwrap_or(d);
            Some(AddedToken {
                content: o.get("content")?.as_str()?.to_string(),
                special: flag("special", special),
                lstrip: flag("lstrip", false),
                rstrip: flag("rstrip", false),
                single_word: flag("single_word", false),
                normalized: flag("normalized", !special),
            })
        }
        _ => None,
    }
}

/// tokenizer_config.json and special_tokens_map.json of a directory.
struct Configs {
    cfg: Option<Value>,
    cfg_path: PathBuf,
    special_map: Option<Value>,
}

impl Configs {
    fn read(dir: &Path) -> Result<Configs> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            Some(read_json(&cfg_path)?)
        } else {
            None
        };
        let map_path = dir.join("special_tokens_map.json");
        let special_map = if map_path.exists() {
            Some(read_json(&map_path)?)
        } else {
            None
        };
        Ok(Configs {
            cfg,
            cfg_path,
            special_map,
        })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.cfg.as_ref()?.get(key)
    }

    /// A special-token attribute: tokenizer_config.json, else special_tokens_map.json.
    /// `Some(None)` is an explicit null.
    fn special(&self, key: &str) -> Option<Option<&Value>> {
        fn from<'v>(v: &'v Value, key: &str) -> Option<Option<&'v Value>> {
            v.get(key).map(|t| (!t.is_null()).then_some(t))
        }
        self.cfg
            .as_ref()
            .and_then(|v| from(v, key))
            .or_else(|| self.special_map.as_ref().and_then(|v| from(v, key)))
    }

    /// A flag as transformers 4 tests it: absent is `default`, null is false.
    fn flag(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(v) => v.as_bool().unwrap_or(false),
        }
    }

    /// `added_tokens_decoder`: id → AddedToken.
    fn added_tokens_decoder(&self) -> Result<Vec<(u32, AddedToken)>> {
        let Some(map) = self.get("added_tokens_decoder") else {
            return Ok(Vec::new());
        };
        let bad = |reason: String| Error::bad_value(&self.cfg_path, "added_tokens_decoder", reason);
        let map = map
            .as_object()
            .ok_or_else(|| bad("expected an object".into()))?;
        let mut out = Vec::new();
        for (id, tok) in map {
            let id: u32 = id
                .parse()
                .map_err(|_| bad(format!("`{id}` is not a token id")))?;
            let tok = added_token(tok, false)
                .ok_or_else(|| bad(format!("token {id} has no `content`")))?;
            out.push((id, tok));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }
}

impl Tokenizer {
    /// Loads a checkpoint directory's tokenizer: tokenizer.json, else tokenizer.model, else
    /// vocab.json + merges.txt; plus tokenizer_config.json and the chat template.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_dir_with(dir, TokenizerPreference::Auto)
    }

    /// [`Tokenizer::from_dir`] choosing between files when there are several.
    pub fn from_dir_with(dir: &Path, preference: TokenizerPreference) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let model = dir.join("tokenizer.model");
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let configs = Configs::read(dir)?;
        let mut tok = if preference == TokenizerPreference::SentencePiece && model.exists() {
            Self::sentencepiece(&model, &configs)?
        } else if json.exists() {
            Self::hf_json(&json, &configs)?
        } else if model.exists() {
            Self::sentencepiece(&model, &configs)?
        } else if vocab.exists() && merges.exists() {
            Self::gpt2(dir, &configs)?
        } else {
            return Err(Error::Tokenizer {
                path: json,
                reason: "file not found (nor tokenizer.model, nor vocab.json + merges.txt)".into(),
            });
        };
        tok.chat_template = chat_template(dir, &configs, &tok)?;
        Ok(tok)
    }

    /// A SentencePiece tokenizer from a model and slow-`LlamaTokenizer` settings (a GGUF
    /// vocabulary, for instance); `path` is what errors will name.
    pub fn from_sentencepiece(
        model: SpmModel,
        config: LlamaTokenizerConfig,
        path: impl Into<PathBuf>,
    ) -> Self {
        let slow = LlamaSlowTokenizer::new(model, config);
        Tokenizer {
            bos_token: slow.bos_token().map(str::to_string),
            eos_token: slow.eos_token().map(str::to_string),
            backend: Backend::Spm(Box::new(slow)),
            kind: TokenizerKind::SentencePiece,
            path: path.into(),
            chat_template: None,
        }
    }

    fn hf_json(path: &Path, configs: &Configs) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self::from_hf(
            inner,
            configs,
            path,
            TokenizerKind::HuggingFaceJson,
        ))
    }

    /// A tokenizer built in code (from GGUF metadata); `path` is what errors will name.
    pub fn from_tokenizers(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
        path: &Path,
    ) -> Self {
        Tokenizer {
            backend: Backend::Hf {
                inner: Box::new(inner),
                clean_up: false,
            },
            kind: TokenizerKind::HuggingFaceJson,
            path: path.to_path_buf(),
            bos_token,
            eos_token,
            chat_template: None,
        }
    }

    fn from_hf(
        inner: tokenizers::Tokenizer,
        configs: &Configs,
        path: &Path,
        kind: TokenizerKind,
    ) -> Self {
        let is_bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_));
        let text = |key: &str| token_text(configs.special(key).flatten());
        Tokenizer {
            backend: Backend::Hf {
                inner: Box::new(inner),
                clean_up: !is_bpe && configs.flag("clean_up_tokenization_spaces", false),
            },
            kind,
            path: path.to_path_buf(),
            bos_token: text("bos_token"),
            eos_token: text("eos_token"),
            chat_template: None,
        }
    }

    /// tokenizer.model with the slow `LlamaTokenizer` settings of tokenizer_config.json.
    fn sentencepiece(path: &Path, configs: &Configs) -> Result<Self> {
        if let Some(class) = configs.get("tokenizer_class").and_then(Value::as_str)
            && !class.starts_with("Llama")
        {
            return Err(Error::bad_value(
                &configs.cfg_path,
                "tokenizer_class",
                format!(
                    "`{class}` with a tokenizer.model is not supported (only LlamaTokenizer's rules are implemented)"
                ),
            ));
        }
        let model = SpmModel::from_file(path)?;
        let defaults = LlamaTokenizerConfig::default();
        let special = |key: &str, default: Option<AddedToken>| match configs.special(key) {
            None => default,
            Some(v) => v.and_then(|v| added_token(v, true)),
        };
        let additional = configs
            .special("additional_special_tokens")
            .flatten()
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(|v| added_token(v, true)).collect())
            .unwrap_or_default();
        let config = LlamaTokenizerConfig {
            bos_token: special("bos_token", defaults.bos_token),
            eos_token: special("eos_token", defaults.eos_token),
            unk_token: special("unk_token", defaults.unk_token),
            sep_token: special("sep_token", None),
            pad_token: special("pad_token", None),
            cls_token: special("cls_token", None),
            mask_token: special("mask_token", None),
            additional_special_tokens: additional,
            added_tokens: configs.added_tokens_decoder()?,
            add_bos_token: configs.flag("add_bos_token", defaults.add_bos_token),
            add_eos_token: configs.flag("add_eos_token", defaults.add_eos_token),
            // transformers 4: `legacy=None` means legacy.
            legacy: configs
                .get("legacy")
                .is_none_or(|v| v.as_bool().unwrap_or(true)),
            add_prefix_space: configs.flag("add_prefix_space", defaults.add_prefix_space),
            clean_up_tokenization_spaces: configs.flag("clean_up_tokenization_spaces", false),
        };
        Ok(Self::from_sentencepiece(model, config, path))
    }

    /// vocab.json + merges.txt (+ added_tokens.json): the byte-level BPE transformers builds
    /// for GPT2Tokenizer / CodeGenTokenizer, written as a tokenizer.json for the
    /// `tokenizers` crate.
    fn gpt2(dir: &Path, configs: &Configs) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let bad = |path: &Path, reason: String| Error::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let mut vocab: Map<String, Value> = match read_json(&vocab_path)? {
            Value::Object(m) => m,
            _ => {
                return Err(bad(
                    &vocab_path,
                    "expected a JSON object of token → id".into(),
                ));
            }
        };
        let mut ids: BTreeMap<u32, String> = BTreeMap::new();
        for (token, id) in &vocab {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(&vocab_path, format!("token {token:?} has no valid id")))?;
            ids.insert(id, token.clone());
        }
        let merges_text =
            std::fs::read_to_string(&merges_path).map_err(|e| Error::io(&merges_path, e))?;
        let mut merges = Vec::new();
        for (n, line) in merges_text.lines().enumerate() {
            if line.is_empty() || (n == 0 && line.starts_with("#version")) {
                continue;
            }
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| bad(&merges_path, format!("line {}: expected two tokens", n + 1)))?;
            merges.push(json!([a, b]));
        }

        // Added tokens: tokenizer_config.json's added_tokens_decoder, then added_tokens.json
        // for the rest; special tokens are added when missing, as transformers does.
        let mut added: BTreeMap<u32, AddedToken> =
            configs.added_tokens_decoder()?.into_iter().collect();
        let special_texts: Vec<String> = [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ]
        .iter()
        .filter_map(|k| match configs.special(k) {
            // GPT2Tokenizer's defaults.
            None if matches!(*k, "bos_token" | "eos_token" | "unk_token") => {
                Some("<|endoftext|>".to_string())
            }
            None => None,
            Some(v) => token_text(v),
        })
        .chain(
            configs
                .special("additional_special_tokens")
                .flatten()
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| token_text(Some(v))),
        )
        .collect();
        let added_json = dir.join("added_tokens.json");
        if added_json.exists() {
            let Value::Object(map) = read_json(&added_json)? else {
                return Err(bad(
                    &added_json,
                    "expected a JSON object of token → id".into(),
                ));
            };
            for (content, id) in map {
                let id = id
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        bad(&added_json, format!("token {content:?} has no valid id"))
                    })?;
                if added.values().any(|t| t.content == content) {
                    continue;
                }
                let special = special_texts.contains(&content);
                added.entry(id).or_insert_with(|| {
                    if special {
                        AddedToken::special(content)
                    } else {
                        AddedToken::plain(content)
                    }
                });
            }
        }
        for text in &special_texts {
            if added.values().any(|t| &t.content == text) {
                continue;
            }
            let next = ids.keys().chain(added.keys()).max().map_or(0, |m| m + 1);
            let id = vocab
                .get(text)
                .and_then(Value::as_u64)
                .map_or(next, |i| i as u32);
            added.insert(id, AddedToken::special(text.clone()));
        }
        // The added tokens go into the model's vocabulary too, so that the `tokenizers`
        // crate gives them exactly these ids.
        for (id, tok) in &added {
            if let Some(other) = ids.get(id)
                && other != &tok.content
            {
                return Err(bad(
                    &added_json,
                    format!("id {id} is both {other:?} and {:?}", tok.content),
                ));
            }
            vocab.entry(tok.content.clone()).or_insert(json!(id));
        }

        let add_prefix_space = configs.flag("add_prefix_space", false);
        let text = |key: &str| token_text(configs.special(key).flatten());
        let post_processor = template_processing(
            configs
                .flag("add_bos_token", false)
                .then(|| text("bos_token"))
                .flatten(),
            configs
                .flag("add_eos_token", false)
                .then(|| text("eos_token"))
                .flatten(),
            &vocab,
        );
        let added_tokens: Vec<Value> = added
            .iter()
            .map(|(id, t)| {
                json!({
                    "id": id, "content": t.content, "single_word": t.single_word,
                    "lstrip": t.lstrip, "rstrip": t.rstrip, "normalized": t.normalized,
                    "special": t.special,
                })
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "ByteLevel", "add_prefix_space": add_prefix_space,
                "trim_offsets": true, "use_regex": true,
            },
            "post_processor": post_processor,
            "decoder": {
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true,
            },
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let inner = tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| bad(&merges_path, e.to_string()))?;
        let mut tok = Self::from_hf(inner, configs, &vocab_path, TokenizerKind::Gpt2Bpe);
        // GPT2Tokenizer's defaults when no config names them.
        for (slot, key) in [
            (&mut tok.bos_token, "bos_token"),
            (&mut tok.eos_token, "eos_token"),
        ] {
            if configs.special(key).is_none() {
                *slot = Some("<|endoftext|>".into());
            }
        }
        Ok(tok)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Token ids of `text`. `add_special_tokens` adds what the tokenizer adds around a
    /// text (a LLaMA BOS, an EOS when configured); it is off for text already rendered by a
    /// chat template, which writes its own special tokens. Special tokens written in the
    /// text are always recognised.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf { inner, .. } => {
                let enc = inner
                    .encode(text, add_special_tokens)
                    .map_err(|e| self.err(e))?;
                Ok(enc.get_ids().to_vec())
            }
            Backend::Spm(slow) => Ok(slow.encode(text, add_special_tokens)),
        }
    }

    /// Text of `ids`; ids the tokenizer does not know are left out.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        match &self.backend {
            Backend::Hf { inner, clean_up } => {
                let text = inner
                    .decode(ids, skip_special_tokens)
                    .map_err(|e| self.err(e))?;
                Ok(if *clean_up {
                    crate::load::spm::clean_up_tokenization(&text)
                } else {
                    text
                })
            }
            Backend::Spm(slow) => Ok(slow.decode(ids, skip_special_tokens)),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.token_to_id(token),
            Backend::Spm(slow) => slow.token_to_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.id_to_token(id),
            Backend::Spm(slow) => slow.id_to_token(id).map(str::to_string),
        }
    }

    /// Vocabulary size including added tokens (`len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.get_vocab_size(true),
            Backend::Spm(slow) => slow.vocab_size(),
        }
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The file the tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A `TemplateProcessing` post-processor that adds BOS and/or EOS (transformers 5's
/// `update_post_processor`), or none when neither is added.
fn template_processing(
    bos: Option<String>,
    eos: Option<String>,
    vocab: &Map<String, Value>,
) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let mut single = Vec::new();
    let mut tokens = Map::new();
    for (t, first) in [(&bos, true), (&eos, false)] {
        let Some(t) = t else { continue };
        if first {
            single.push(special(t));
        }
        let id = vocab.get(t).cloned().unwrap_or(Value::Null);
        tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some(t) = &eos {
        single.push(special(t));
    }
    let mut pair = single.clone();
    if let Some(t) = &bos {
        pair.push(special(t));
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    if let Some(t) = &eos {
        pair.push(special(t));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": tokens})
}

/// The chat template: chat_template.jinja (transformers 5), else tokenizer_config.json's
/// `chat_template`, a string or a list of named templates.
fn chat_template(dir: &Path, configs: &Configs, tok: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let jinja_path = dir.join("chat_template.jinja");
    let (source, template_path) = if jinja_path.exists() {
        let s = std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?;
        (Some(s), jinja_path)
    } else {
        let s = match configs.get("chat_template") {
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
        (s, configs.cfg_path.clone())
    };
    match source {
        Some(src) => ChatTemplate::new(src, tok.bos_token.clone(), tok.eos_token.clone())
            .map(Some)
            .map_err(|e| Error::Template(format!("{}: {e}", template_path.display()))),
        None => Ok(None),
    }
}
