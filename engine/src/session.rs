//! A loaded model with its tokenizer and template: the synchronous engine API. The engine
//! thread ([`crate::Engine`]) wraps one of these; the CLI's one-shot commands use it
//! directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::cpu::CpuBackend;
use crate::chat::Message;
use crate::error::{Error, Result};
use crate::generate::{self, Generation, SamplingParams, TextStream};
use crate::load::hf::{ConfigReader, config_path, parse_llm_config, read_json};
use crate::load::safetensors::Checkpoint;
use crate::load::tokenizer::Tokenizer;
use crate::metrics::ms_since;
use crate::model::llama::Llama;
use crate::model::{LanguageModel, Logits};

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendKind {
    #[default]
    Cpu,
    Gpu,
    /// The fastest available backend.
    Auto,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "gpu" => Ok(BackendKind::Gpu),
            "auto" => Ok(BackendKind::Auto),
            other => Err(format!(
                "unknown backend `{other}` (expected cpu, gpu or auto)"
            )),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    pub backend: BackendKind,
    /// CPU threads (default: all available).
    pub threads: Option<usize>,
    /// KV-cache capacity in positions (default: the model's maximum).
    pub context_len: Option<usize>,
}

/// What the UI and `pocketvlm info` show about a loaded model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub family: String,
    pub architecture: String,
    pub params: usize,
    /// Tensor count per stored dtype, e.g. {"bf16": 201}.
    pub dtypes: BTreeMap<String, usize>,
    pub weight_bytes: usize,
    pub context_len: usize,
    pub vocab_size: usize,
    pub backend: String,
    pub has_chat_template: bool,
    /// Sampling settings recommended by the checkpoint's generation_config.json.
    pub default_sampling: SamplingParams,
    pub load_ms: f64,
}

pub struct Session {
    model: Box<dyn LanguageModel>,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    info: ModelInfo,
}

/// Sampling defaults from generation_config.json (`do_sample`, `temperature`, `top_k`,
/// `top_p`, `repetition_penalty`), greedy where it says nothing.
fn default_sampling(dir: &Path) -> Result<SamplingParams> {
    let mut p = SamplingParams::default();
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(p);
    }
    let json = read_json(&path)?;
    let g = ConfigReader::new(&path, &json)?;
    if g.opt_bool("do_sample")?.unwrap_or(false) {
        p.temperature = g.opt_f32("temperature")?.unwrap_or(1.0);
        p.top_k = g.opt_usize("top_k")?.unwrap_or(0);
        p.top_p = g.opt_f32("top_p")?.unwrap_or(1.0);
    }
    p.repetition_penalty = g.opt_f32("repetition_penalty")?.unwrap_or(1.0);
    p.validate()
        .map_err(|e| Error::bad_value(&path, "sampling", e))?;
    Ok(p)
}

impl Session {
    /// Loads a Hugging Face checkpoint directory.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_dir() {
            return Err(Error::bad_file(
                path,
                "expected a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)",
            ));
        }
        let cfg_path = config_path(path);
        if !cfg_path.exists() {
            return Err(Error::bad_file(
                path,
                "no config.json here: not a Hugging Face checkpoint directory",
            ));
        }
        let cfg = parse_llm_config(&cfg_path, &read_json(&cfg_path)?)?;
        let tokenizer = Tokenizer::from_dir(path)?;
        let ckpt = Checkpoint::open(path)?;

        let backend = match opts.backend {
            BackendKind::Cpu | BackendKind::Auto => CpuBackend::new(opts.threads)?,
            BackendKind::Gpu => {
                return Err(Error::InvalidArgument(
                    "the GPU backend is not available in this build; use --backend cpu".into(),
                ));
            }
        };
        let context_len = opts
            .context_len
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings)
            .max(1);

        let mut dtypes = BTreeMap::new();
        for name in ckpt.names() {
            if let Some(e) = ckpt.entry(name) {
                *dtypes.entry(e.dtype.to_lowercase()).or_insert(0) += 1;
            }
        }
        let model: Box<dyn LanguageModel> =
            Box::new(Llama::load(backend, cfg.clone(), &ckpt, "", context_len)?);

        let mut stop_ids = cfg.eos_token_ids.clone();
        if let Some(id) = tokenizer
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            && !stop_ids.contains(&id)
        {
            stop_ids.push(id);
        }
        let info = ModelInfo {
            path: path.to_path_buf(),
            family: cfg.arch.name().to_string(),
            architecture: cfg.arch.name().to_string(),
            params: cfg.param_count(),
            dtypes,
            weight_bytes: model.weight_bytes(),
            context_len,
            vocab_size: cfg.vocab_size,
            backend: model.backend_name(),
            has_chat_template: tokenizer.chat_template.is_some(),
            default_sampling: default_sampling(path)?,
            load_ms: ms_since(start),
        };
        Ok(Session {
            model,
            tokenizer,
            stop_ids,
            info,
        })
    }

    /// The checkpoint's recommended sampling settings (greedy when it has none).
    pub fn default_sampling(&self) -> &SamplingParams {
        &self.info.default_sampling
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The prompt text for a conversation: the chat template with the assistant's turn
    /// opened, or (`raw`, or no template) the last message's text as is.
    pub fn prompt_text(&self, messages: &[Message], raw: bool) -> Result<(String, bool)> {
        match (&self.tokenizer.chat_template, raw) {
            (Some(t), false) => Ok((t.render(messages, true)?, true)),
            _ => {
                let text = messages
                    .last()
                    .map(|m| m.content.clone())
                    .unwrap_or_default();
                Ok((text, false))
            }
        }
    }

    /// Token ids of the prompt for a conversation (see [`Session::prompt_text`]).
    pub fn prompt_tokens(&self, messages: &[Message], raw: bool) -> Result<Vec<u32>> {
        let (text, templated) = self.prompt_text(messages, raw)?;
        // A rendered template already holds its special tokens; raw text gets the
        // tokenizer's own (e.g. a LLaMA BOS).
        self.tokenizer.encode(&text, !templated)
    }

    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        cancelled: &dyn Fn() -> bool,
        on_token: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<Generation> {
        generate::generate(
            self.model.as_mut(),
            prompt,
            params,
            &self.stop_ids,
            cancelled,
            on_token,
        )
    }

    /// [`Session::generate`] with the tokens turned into text: `on_text(id, piece)` gets each
    /// token with the text it completes (possibly empty); returns the generation and the
    /// whole answer text.
    pub fn generate_text(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(u32, &str),
    ) -> Result<(Generation, String)> {
        let mut stream = TextStream::default();
        let mut text = String::new();
        let tokenizer = &self.tokenizer;
        let generation = generate::generate(
            self.model.as_mut(),
            prompt,
            params,
            &self.stop_ids,
            cancelled,
            &mut |id| {
                let piece = stream.push(tokenizer, id)?.unwrap_or_default();
                text.push_str(&piece);
                on_text(id, &piece);
                Ok(())
            },
        )?;
        let tail = stream.finish(tokenizer)?;
        if !tail.is_empty() {
            text.push_str(&tail);
            on_text(u32::MAX, &tail);
        }
        Ok((generation, text))
    }

    /// Runs `tokens` at positions `pos0..` on top of the KV cache already filled for
    /// positions `0..pos0`, returning the last position's logits.
    pub fn forward_last(&mut self, tokens: &[u32], pos0: usize) -> Result<Vec<f32>> {
        self.model.forward(tokens, pos0, Logits::Last)
    }

    /// Logits for every position of `ids` run from position 0, `[ids.len() × vocab]`.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() > self.model.context_len() {
            return Err(Error::ContextOverflow {
                prompt: ids.len(),
                context: self.model.context_len(),
            });
        }
        self.model.forward(ids, 0, Logits::All)
    }
}
