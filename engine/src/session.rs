//! A loaded model with its tokenizer and prompt format: the synchronous engine API. The
//! engine thread ([`crate::Engine`]) wraps one of these; the CLI's one-shot commands use it
//! directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::cpu::{CpuBackend, KvPrecision};
use crate::backend::gpu::{GpuBackend, GpuOptions};
use crate::chat::{Message, templates};
use crate::error::{Error, Result};
use crate::generate::{self, GenerateOptions, Generation, SamplingParams, TextStream};
use crate::load::gguf::GgufFile;
use crate::load::gguf_model::{self, GgufSource, Sources};
use crate::load::gguf_tokenizer;
use crate::load::hf::{ConfigReader, read_json};
use crate::load::safetensors::Checkpoint;
use crate::load::source::TensorSource;
use crate::load::spec::read_model_spec;
use crate::load::tokenizer::{Tokenizer, TokenizerPreference};
use crate::metrics::{
    Span, Stage, TurnMetrics, ms_between, ms_since, offset_ms, process_memory_bytes,
};
use crate::model::spec::{Family, ImagePlaceholder, ModelSpec, PromptTemplate};
use crate::model::vlm::{QuantPolicy, Vlm};
use crate::model::{ImageId, Logits, Model, Segment};
use crate::tensor::DType;

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
    /// Store the language model's matrices in this format (default: as in the file).
    pub quant: Option<DType>,
    /// Store the vision tower's and projector's matrices in this format.
    pub vision_quant: Option<DType>,
    /// A llama.cpp CLIP projector file to pair with a GGUF language model (MobileVLM).
    pub mmproj: Option<PathBuf>,
    /// Memory the load may use, in bytes (default: `POCKETVLM_MEMORY_LIMIT`, else what
    /// the system reports available); a model estimated to need more is refused.
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// Positions per prefill call (default 128, BlueLM-V's choice); a cancel is honoured
    /// between calls.
    #[serde(default)]
    pub prefill_chunk: Option<usize>,
    /// Where the vision tower and projector run when not beside the language model
    /// (`Cpu` or `Gpu`; `None` or `Auto`: with the language model). A tower on the other
    /// backend encodes on a thread of its own while the language model prefills.
    #[serde(default)]
    pub vision_backend: Option<BackendKind>,
    /// How the CPU backend keeps the KV cache: f16 (the default, or `POCKETVLM_KV`) or f32
    /// (exact, twice the memory). The GPU backend keeps it in f32.
    #[serde(default)]
    pub kv_cache: Option<KvPrecision>,
}

impl LoadOptions {
    /// The CPU backend's KV-cache format: `kv_cache`, else `POCKETVLM_KV`, else f16.
    pub fn kv_precision(&self) -> KvPrecision {
        self.kv_cache.unwrap_or_else(KvPrecision::from_env)
    }
}

/// What the UI and `pocketvlm info` show about a loaded model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// `text`, `mobilevlm`, `mobilevlm-v2`, `imp-phi2`, `imp-qwen2`, `imp-phi3`.
    pub family: String,
    /// The language model's architecture (`llama`, `qwen2`, `phi3`, `phi2`).
    pub architecture: String,
    pub params: usize,
    /// Tensor count per stored dtype, e.g. {"bf16": 201}.
    pub dtypes: BTreeMap<String, usize>,
    pub weight_bytes: usize,
    pub context_len: usize,
    pub vocab_size: usize,
    /// Whether the model takes images, and how many positions each one fills.
    pub image_tokens: Option<usize>,
    pub backend: String,
    /// With `BackendKind::Auto`: the decode-step timings that chose the backend.
    #[serde(default)]
    pub auto_choice: Option<String>,
    /// The GPU adapter the backend runs on (`None` on the CPU).
    #[serde(default)]
    pub adapter: Option<String>,
    /// The vision tower's backend when it is not the language model's (`--vision-backend`).
    #[serde(default)]
    pub vision_backend: Option<String>,
    pub has_chat_template: bool,
    /// Sampling settings recommended by the checkpoint's generation_config.json.
    pub default_sampling: SamplingParams,
    pub load_ms: f64,
}

/// A templated, tokenised prompt: token runs with the conversation's images between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    pub parts: Vec<PromptPart>,
    /// The conversation's images, in the order their placeholders appear.
    pub images: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PromptPart {
    Tokens(Vec<u32>),
    /// The image `images[i]`.
    Image(usize),
}

impl Prompt {
    /// The text token ids (image positions left out).
    pub fn text_tokens(&self) -> Vec<u32> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                PromptPart::Tokens(t) => Some(t.iter().copied()),
                PromptPart::Image(_) => None,
            })
            .flatten()
            .collect()
    }
}

/// What a loader found before the model is built.
struct Loaded<'a> {
    path: &'a Path,
    spec: ModelSpec,
    tokenizer: Tokenizer,
    dtypes: BTreeMap<String, usize>,
    default_sampling: SamplingParams,
}

/// Whether a file starts with the GGUF magic.
fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == crate::load::gguf::GGUF_MAGIC
}

pub struct Session {
    model: Box<dyn Model>,
    tokenizer: Tokenizer,
    spec: ModelSpec,
    stop_ids: Vec<u32>,
    info: ModelInfo,
    /// Encoded images by content.
    images: ImageCache,
    /// What the KV cache holds, position by position (prefix reuse across turns).
    kv: Vec<PosKey>,
    prefix_reuse: bool,
    prefill_chunk: usize,
}

/// A content hash of an image file's bytes: the key of the image cache and of image
/// positions in the KV cache. Two SipHash-2-4 streams with different keys (128 bits); not cryptographic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageHash(pub u64, pub u64);

impl ImageHash {
    pub fn of(bytes: &[u8]) -> ImageHash {
        use std::hash::Hasher;
        let stream = |seed: u64| {
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(seed, !seed);
            h.write(bytes);
            h.finish()
        };
        ImageHash(stream(0x5eed_0001), stream(0x5eed_0002))
    }
}

/// One KV-cache position: a text token, or row `r` of an image's embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PosKey {
    Token(u32),
    Image(ImageHash, u32),
}

/// What [`Session::prepare_image`] did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedImage {
    pub hash: ImageHash,
    /// Language-model positions the image fills.
    pub tokens: usize,
    /// Vision passes: tiles plus thumbnail (1 for fixed-resolution towers).
    pub passes: usize,
    pub grid: crate::image::tiles::TileGrid,
    pub thumbnail: bool,
    /// The decoded image's size.
    pub width: u32,
    pub height: u32,
    /// Reading, decoding and preprocessing (0 when it was cached).
    pub preprocess_ms: f64,
    /// It was already encoded (or being encoded): nothing new ran.
    pub cached: bool,
}

/// How far an image's encoding has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageTiming {
    pub vision_ms: f64,
    pub projector_ms: f64,
    pub ready: bool,
}

/// Encoded images kept between turns, least recently used evicted past a budget.
#[derive(Default)]
struct ImageCache {
    entries: std::collections::HashMap<ImageHash, CachedImage>,
    clock: u64,
    /// Encode spans finished but not yet shown on a turn's timeline.
    spans: Vec<crate::model::vlm::EncodeSpan>,
}

struct CachedImage {
    /// The embeddings in the model (`None` once evicted: positions of the image already in
    /// the KV cache still match by hash).
    id: Option<ImageId>,
    info: PreparedImage,
    /// When reading and preprocessing ran.
    preprocess: Option<(Instant, Instant)>,
    last_used: u64,
    /// Its preparation is already on some turn's timeline.
    reported: bool,
}

/// Encoded images kept in the model beyond the KV cache's own (a tiled 3B image is a few
/// tens of MB of embeddings).
const IMAGE_CACHE_ENTRIES: usize = 8;

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

/// Receives load progress: a stage name and the fraction of the whole load done (0..=1).
pub type LoadProgress<'a> = &'a mut (dyn FnMut(&str, f32) + Send);

/// Stage names [`Session::load_with_progress`] reports.
pub mod load_stage {
    pub const READING_CONFIG: &str = "Reading config";
    pub const LOADING_TOKENIZER: &str = "Loading tokenizer";
    pub const OPENING_WEIGHTS: &str = "Opening weights";
    pub const LOADING_WEIGHTS: &str = "Loading weights";
    pub const READY: &str = "Ready";
}

/// Where the weight-loading stage starts and ends in the reported fraction.
const WEIGHTS_FROM: f32 = 0.1;
const WEIGHTS_TO: f32 = 0.98;

/// A tensor source that reports how many of its tensors the model builder has read.
struct ProgressSource<'a> {
    inner: &'a dyn TensorSource,
    total: usize,
    read: AtomicUsize,
    /// The last whole percentage reported, so a large model sends ~100 events, not thousands.
    reported: AtomicUsize,
    progress: Mutex<LoadProgress<'a>>,
    /// Polled before every tensor read: a cancelled load stops at the next tensor.
    cancelled: &'a (dyn Fn() -> bool + Sync),
}

impl<'a> ProgressSource<'a> {
    fn new(
        inner: &'a dyn TensorSource,
        progress: LoadProgress<'a>,
        cancelled: &'a (dyn Fn() -> bool + Sync),
    ) -> Self {
        ProgressSource {
            total: inner.names().len().max(1),
            inner,
            read: AtomicUsize::new(0),
            reported: AtomicUsize::new(usize::MAX),
            progress: Mutex::new(progress),
            cancelled,
        }
    }

    fn tick(&self) {
        let read = self.read.fetch_add(1, Ordering::Relaxed) + 1;
        let done = (read as f32 / self.total as f32).min(1.0);
        let percent = (done * 100.0) as usize;
        if self.reported.swap(percent, Ordering::Relaxed) != percent
            && let Ok(mut report) = self.progress.lock()
        {
            report(
                load_stage::LOADING_WEIGHTS,
                WEIGHTS_FROM + done * (WEIGHTS_TO - WEIGHTS_FROM),
            );
        }
    }
}

impl TensorSource for ProgressSource<'_> {
    fn location(&self) -> &Path {
        self.inner.location()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(name)
    }
    fn tensor(&self, name: &str) -> Result<crate::tensor::HostTensor> {
        if (self.cancelled)() {
            return Err(Error::Cancelled);
        }
        let t = self.inner.tensor(name);
        self.tick();
        t
    }
    fn path_of(&self, name: &str) -> PathBuf {
        self.inner.path_of(name)
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn stored_bytes(&self, name: &str) -> Option<u64> {
        self.inner.stored_bytes(name)
    }
}

impl Session {
    /// Loads a Hugging Face checkpoint directory or a GGUF file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::load_with_progress(path, opts, &mut |_, _| {})
    }

    /// [`Session::load`], reporting its stages (see [`load_stage`]) as it goes.
    pub fn load_with_progress(
        path: &Path,
        opts: &LoadOptions,
        progress: LoadProgress,
    ) -> Result<Self> {
        Self::load_cancellable(path, opts, progress, &|| false)
    }

    /// [`Session::load_with_progress`] that stops with [`Error::Cancelled`] once
    /// `cancelled` returns true (polled between stages and before every tensor read).
    pub fn load_cancellable(
        path: &Path,
        opts: &LoadOptions,
        progress: LoadProgress,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self> {
        let start = Instant::now();
        progress(load_stage::READING_CONFIG, 0.0);
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_file() && is_gguf(path) {
            return Self::load_gguf(path, opts, start, progress, cancelled);
        }
        if opts.mmproj.is_some() {
            return Err(Error::InvalidArgument(
                "--mmproj goes with a GGUF language model file".into(),
            ));
        }
        if !meta.is_dir() {
            return Err(Error::bad_file(
                path,
                "expected a Hugging Face checkpoint directory (config.json, weights, tokenizer) or a GGUF file",
            ));
        }
        if !path.join("config.json").exists() {
            return Err(Error::bad_file(
                path,
                "no config.json here: not a Hugging Face checkpoint directory",
            ));
        }
        let spec = read_model_spec(path)?;
        progress(load_stage::LOADING_TOKENIZER, 0.03);
        // MobileVLM's reference code runs the slow SentencePiece tokenizer.
        let preference = match spec.family {
            Family::MobileVlm | Family::MobileVlmV2 => TokenizerPreference::SentencePiece,
            _ => TokenizerPreference::Auto,
        };
        let tokenizer = Tokenizer::from_dir_with(path, preference)?;
        progress(load_stage::OPENING_WEIGHTS, 0.07);
        let ckpt = Checkpoint::open(path)?;
        let mut dtypes = BTreeMap::new();
        for name in ckpt.names() {
            if let Some(e) = ckpt.entry(name) {
                *dtypes.entry(e.dtype.to_lowercase()).or_insert(0) += 1;
            }
        }
        let loaded = Loaded {
            path,
            spec,
            tokenizer,
            dtypes,
            default_sampling: default_sampling(path)?,
        };
        Self::finish_load(loaded, &ckpt, opts, start, progress, cancelled)
    }

    /// A synthetic model (random weights with a real model's shapes, see
    /// [`crate::model::synthetic`]) with its placeholder tokenizer, for benchmarks: its
    /// language model stored as `opts.quant` (default Q4_0), its vision tower and projector
    /// as `opts.vision_quant` (default F16).
    pub fn load_synthetic(name: &str, opts: &LoadOptions) -> Result<Self> {
        use crate::model::synthetic;
        let start = Instant::now();
        let spec = synthetic::spec(name)?;
        let llm = opts.quant.unwrap_or(DType::Q4_0);
        let vision = opts.vision_quant.unwrap_or(DType::F16);
        let src = synthetic::SyntheticSource::new(&spec, llm, vision);
        let path = PathBuf::from(format!("synthetic:{name}"));
        let loaded = Loaded {
            path: &path,
            spec,
            tokenizer: synthetic::tokenizer(name)?,
            dtypes: BTreeMap::from([(llm.to_string(), 1), (vision.to_string(), 1)]),
            default_sampling: SamplingParams::default(),
        };
        // The source already holds the chosen formats.
        let opts = LoadOptions {
            quant: None,
            vision_quant: None,
            ..opts.clone()
        };
        Self::finish_load(loaded, &src, &opts, start, &mut |_, _| {}, &|| false)
    }

    /// An LLM GGUF file, plus the mmproj file of `opts` for a vision model.
    fn load_gguf(
        path: &Path,
        opts: &LoadOptions,
        start: Instant,
        progress: LoadProgress,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self> {
        progress(load_stage::OPENING_WEIGHTS, 0.02);
        let file = GgufFile::open(path)?;
        let mmproj = opts.mmproj.as_deref().map(GgufFile::open).transpose()?;
        let spec = gguf_model::model_spec(&file, mmproj.as_ref())?;
        progress(load_stage::LOADING_TOKENIZER, 0.05);
        let tokenizer = gguf_tokenizer::tokenizer(&file)?;
        let mut dtypes = BTreeMap::new();
        for f in std::iter::once(&file).chain(mmproj.as_ref()) {
            for t in f.tensors.values() {
                *dtypes
                    .entry(format!("{:?}", t.ty).to_lowercase())
                    .or_insert(0) += 1;
            }
        }
        let mut sources: Vec<Box<dyn TensorSource>> = vec![Box::new(GgufSource::new(
            file,
            gguf_model::hf_name_of_llm_tensor,
        ))];
        if let Some(m) = mmproj {
            sources.push(Box::new(GgufSource::new(
                m,
                gguf_model::hf_name_of_mmproj_tensor,
            )));
        }
        let loaded = Loaded {
            path,
            spec,
            tokenizer,
            dtypes,
            default_sampling: SamplingParams::default(),
        };
        Self::finish_load(loaded, &Sources(sources), opts, start, progress, cancelled)
    }

    /// Builds the model on the chosen backend and the session around it.
    fn finish_load(
        loaded: Loaded,
        src: &dyn TensorSource,
        opts: &LoadOptions,
        start: Instant,
        progress: LoadProgress,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self> {
        let Loaded {
            path,
            spec,
            tokenizer,
            dtypes,
            default_sampling,
        } = loaded;
        let cfg = &spec.llm;
        let context_len = opts
            .context_len
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings)
            .max(1);
        let quant = QuantPolicy {
            llm: opts.quant,
            vision: opts.vision_quant,
        };
        if let Some(available) = opts.memory_limit.or_else(crate::memory::available_bytes) {
            // A cache on the CPU takes its format's bytes; on a GPU (or `auto`, which may
            // choose one), 4.
            let kv_value_bytes = match opts.backend {
                BackendKind::Cpu => opts.kv_precision().value_bytes(),
                _ => 4,
            };
            let needed = crate::memory::estimate(
                &spec,
                src,
                opts.quant,
                opts.vision_quant,
                context_len,
                kv_value_bytes,
            );
            let quantised = opts.quant.is_some_and(|q| q.is_quantized());
            crate::memory::check(needed, available, quantised, context_len)?;
        }
        // Weight progress counts tensors as the model reads them (twice for `auto`, which
        // builds the model on both backends).
        let src = ProgressSource::new(src, &mut *progress, cancelled);
        let load = |kind| load_model(kind, opts, &spec, &src, quant, context_len);
        let (model, auto_note) = match opts.backend {
            BackendKind::Cpu => (load(BackendKind::Cpu)?, None),
            BackendKind::Gpu => (load(BackendKind::Gpu)?, None),
            BackendKind::Auto => pick_faster(load(BackendKind::Gpu), load(BackendKind::Cpu)?)?,
        };

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
            family: match spec.family {
                Family::TextOnly => cfg.arch.name().to_string(),
                f => f.name().to_string(),
            },
            architecture: cfg.arch.name().to_string(),
            params: cfg.param_count(),
            dtypes,
            weight_bytes: model.weight_bytes(),
            context_len,
            vocab_size: cfg.vocab_size,
            image_tokens: model.image_tokens(),
            adapter: model.adapter(),
            backend: model.backend_name(),
            vision_backend: model.vision_backend_name(),
            auto_choice: auto_note,
            has_chat_template: spec.template != PromptTemplate::Jinja
                || tokenizer.chat_template.is_some(),
            default_sampling,
            load_ms: ms_since(start),
        };
        progress(load_stage::READY, 1.0);
        Ok(Session {
            model,
            tokenizer,
            spec,
            stop_ids,
            info,
            images: ImageCache::default(),
            kv: Vec::new(),
            prefix_reuse: true,
            prefill_chunk: opts
                .prefill_chunk
                .unwrap_or(crate::model::llm::PREFILL_CHUNK)
                .max(1),
        })
    }

    /// The checkpoint's recommended sampling settings (greedy when it has none).
    pub fn default_sampling(&self) -> &SamplingParams {
        &self.info.default_sampling
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// The model, to drive directly. Whatever is done with it may change the KV cache, so
    /// the next turn starts without prefix reuse.
    pub fn model_mut(&mut self) -> &mut dyn Model {
        self.kv.clear();
        self.model.as_mut()
    }

    /// Turns prefix reuse across turns on (the default) or off.
    pub fn set_prefix_reuse(&mut self, on: bool) {
        self.prefix_reuse = on;
        self.kv.clear();
    }

    /// Positions per prefill call; a cancel is honoured between calls.
    pub fn set_prefill_chunk(&mut self, positions: usize) {
        self.prefill_chunk = positions.max(1);
    }

    pub fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
    }

    /// Positions the KV cache holds from the last turn, available for reuse.
    pub fn cached_positions(&self) -> usize {
        self.kv.len()
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The prompt text for a conversation, ending where the assistant's reply starts, and
    /// whether a template produced it (its special tokens are then already in the text).
    /// `raw` (or a text model without a template) sends the last message as is.
    pub fn prompt_text(&self, messages: &[Message], raw: bool) -> Result<(String, bool)> {
        let has_images = messages.iter().any(|m| !m.images.is_empty());
        if has_images && self.spec.vision.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{} is a text-only model: it cannot take images",
                self.info.path.display()
            )));
        }
        if raw {
            let last = messages
                .last()
                .cloned()
                .unwrap_or_else(|| Message::user(""));
            let mut text = String::new();
            for _ in &last.images {
                text.push_str(templates::IMAGE_PLACEHOLDER);
                text.push('\n');
            }
            text.push_str(&last.content);
            return Ok((text, false));
        }
        match (self.spec.template, &self.tokenizer.chat_template) {
            (PromptTemplate::Jinja, Some(t)) => Ok((t.render(messages, true)?, true)),
            (PromptTemplate::Jinja, None) => self.prompt_text(messages, true),
            (template, _) => Ok((templates::render(template, messages)?, true)),
        }
    }

    /// Templates and tokenises a conversation, locating its images.
    pub fn prompt(&self, messages: &[Message], raw: bool) -> Result<Prompt> {
        let (text, templated) = self.prompt_text(messages, raw)?;
        let images: Vec<PathBuf> = if raw {
            messages
                .last()
                .map(|m| m.images.clone())
                .unwrap_or_default()
        } else {
            messages
                .iter()
                .flat_map(|m| m.images.iter().cloned())
                .collect()
        };
        // Vision templates write special tokens as text the tokenizer must still map (LLaVA
        // tokenises them with its special-token handling); Jinja output has them already.
        let add_special = !templated || self.spec.template != PromptTemplate::Jinja;
        let parts = match self.spec.vision.as_ref().map(|v| v.placeholder) {
            None => vec![PromptPart::Tokens(
                self.tokenizer.encode(&text, add_special)?,
            )],
            Some(ImagePlaceholder::Sentinel) => self.split_at_placeholders(&text)?,
            Some(ImagePlaceholder::VocabId(image_id)) => {
                let ids = self.tokenizer.encode(&text, true)?;
                let mut parts = vec![];
                for (i, run) in ids.split(|&t| t == image_id).enumerate() {
                    if i > 0 {
                        parts.push(PromptPart::Image(i - 1));
                    }
                    parts.push(PromptPart::Tokens(run.to_vec()));
                }
                parts
            }
        };
        let n_placeholders = parts
            .iter()
            .filter(|p| matches!(p, PromptPart::Image(_)))
            .count();
        if n_placeholders != images.len() {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {n_placeholders} image placeholders for {} images (is `<image>` in the text?)",
                images.len()
            )));
        }
        Ok(Prompt {
            parts: parts
                .into_iter()
                .filter(|p| !matches!(p, PromptPart::Tokens(t) if t.is_empty()))
                .collect(),
            images,
        })
    }

    /// MobileVLM's `tokenizer_image_token`: each piece between placeholders is tokenised on
    /// its own; a leading BOS is kept from the first piece only.
    fn split_at_placeholders(&self, text: &str) -> Result<Vec<PromptPart>> {
        let bos = self
            .tokenizer
            .bos_token
            .as_deref()
            .and_then(|b| self.tokenizer.token_to_id(b));
        let chunks = text
            .split(templates::IMAGE_PLACEHOLDER)
            .map(|c| self.tokenizer.encode(c, true))
            .collect::<Result<Vec<_>>>()?;
        let offset = usize::from(bos.is_some() && chunks[0].first().copied() == bos);
        let mut parts = vec![];
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i == 0 {
                parts.push(PromptPart::Tokens(chunk));
            } else {
                parts.push(PromptPart::Image(i - 1));
                parts.push(PromptPart::Tokens(
                    chunk.get(offset..).unwrap_or_default().to_vec(),
                ));
            }
        }
        Ok(parts)
    }

    /// Preprocesses and encodes one image file (outside the image cache); the model keeps its
    /// embeddings until [`Model::release_image`].
    pub fn encode_image_file(&mut self, path: &Path) -> Result<ImageId> {
        let passes = self.image_passes(path)?.passes;
        let id = self.model.begin_image(passes)?;
        if let Err(e) = self.model.wait_image(id) {
            self.model.release_image(id);
            return Err(e);
        }
        Ok(id)
    }

    /// The normalised CHW pixels of every vision pass of an image file (its tiles and
    /// thumbnail for a tiled model; one pass otherwise).
    pub fn image_passes(&self, path: &Path) -> Result<crate::image::PreparedPixels> {
        let vision = self.vision_spec()?;
        let img = crate::image::load_image(path)?;
        Ok(crate::image::preprocess_passes(
            &img,
            &vision.processor,
            vision.tiling.as_ref(),
        ))
    }

    /// The normalised CHW pixels the vision tower gets for an image file (the first pass of
    /// a tiled model).
    pub fn image_pixels(&self, path: &Path) -> Result<Vec<f32>> {
        let mut passes = self.image_passes(path)?.passes;
        Ok(passes.swap_remove(0))
    }

    fn vision_spec(&self) -> Result<&crate::model::spec::VisionSpec> {
        self.spec.vision.as_ref().ok_or_else(|| {
            Error::InvalidArgument("this model has no vision tower: it cannot take images".into())
        })
    }

    /// Encode-while-typing: reads, decodes and preprocesses an image file and starts its
    /// encoding — on the vision thread when the model has one, so this returns once the
    /// pixels are ready. The result is kept by content: a prompt with the same image (any
    /// path) uses it without encoding again. A cached image returns at once.
    pub fn prepare_image(&mut self, path: &Path) -> Result<PreparedImage> {
        let t0 = Instant::now();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let hash = ImageHash::of(&bytes);
        self.prepare_bytes(path, &bytes, hash, t0)
    }

    fn prepare_bytes(
        &mut self,
        path: &Path,
        bytes: &[u8],
        hash: ImageHash,
        t0: Instant,
    ) -> Result<PreparedImage> {
        self.images.clock += 1;
        let clock = self.images.clock;
        if let Some(e) = self.images.entries.get_mut(&hash)
            && e.id.is_some()
        {
            e.last_used = clock;
            let mut info = e.info.clone();
            info.cached = true;
            info.preprocess_ms = 0.0;
            return Ok(info);
        }
        let vision = self.vision_spec()?;
        let img = crate::image::decode_image(bytes, path)?;
        let pp = crate::image::preprocess_passes(&img, &vision.processor, vision.tiling.as_ref());
        let t1 = Instant::now();
        let passes = pp.passes.len();
        let id = self.model.begin_image(pp.passes)?;
        let info = PreparedImage {
            hash,
            tokens: self.model.image_rows(id).unwrap_or(0),
            passes,
            grid: pp.grid,
            thumbnail: pp.thumbnail,
            width: pp.width,
            height: pp.height,
            preprocess_ms: ms_between(t0, t1),
            cached: false,
        };
        self.images.entries.insert(
            hash,
            CachedImage {
                id: Some(id),
                info: info.clone(),
                preprocess: Some((t0, t1)),
                last_used: clock,
                reported: false,
            },
        );
        self.evict_images();
        Ok(info)
    }

    /// Releases the least recently used embeddings past the cache's budget (their entries
    /// stay, so KV positions of those images still match).
    fn evict_images(&mut self) {
        loop {
            let live = self.images.entries.iter().filter(|(_, e)| e.id.is_some());
            if live.clone().count() <= IMAGE_CACHE_ENTRIES {
                break;
            }
            let Some(oldest) = live.min_by_key(|(_, e)| e.last_used).map(|(h, _)| *h) else {
                break;
            };
            if let Some(id) = self
                .images
                .entries
                .get_mut(&oldest)
                .and_then(|e| e.id.take())
            {
                self.model.release_image(id);
            }
        }
    }

    /// How far the encoding of a prepared image has come (`None`: not in the cache).
    pub fn image_timing(&mut self, hash: &ImageHash) -> Option<ImageTiming> {
        let id = self.images.entries.get(hash)?.id?;
        let (t, ready) = self.model.image_times(id)?;
        Some(ImageTiming {
            vision_ms: t.vision_ms,
            projector_ms: t.projector_ms,
            ready,
        })
    }

    /// Waits until a prepared image is encoded, and reports what it took.
    pub fn wait_image(&mut self, hash: &ImageHash) -> Result<ImageTiming> {
        let id = self
            .images
            .entries
            .get(hash)
            .and_then(|e| e.id)
            .ok_or_else(|| Error::InvalidArgument("that image is not prepared".into()))?;
        self.model.wait_image(id)?;
        self.image_timing(hash)
            .ok_or_else(|| Error::InvalidArgument("that image is not prepared".into()))
    }

    /// The content hashes of a prompt's images, preparing those not seen before.
    fn prompt_images(&mut self, prompt: &Prompt) -> Result<Vec<ImageHash>> {
        let n = prompt.images.len();
        if prompt
            .parts
            .iter()
            .any(|p| matches!(p, PromptPart::Image(i) if *i >= n))
        {
            return Err(Error::InvalidArgument(format!(
                "the prompt places an image it does not carry (it has {n})"
            )));
        }
        let mut hashes = Vec::with_capacity(prompt.images.len());
        for path in &prompt.images {
            let t0 = Instant::now();
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let hash = ImageHash::of(&bytes);
            if !self.images.entries.contains_key(&hash) {
                self.prepare_bytes(path, &bytes, hash, t0)?;
            }
            self.images.clock += 1;
            if let Some(e) = self.images.entries.get_mut(&hash) {
                e.last_used = self.images.clock;
            }
            hashes.push(hash);
        }
        Ok(hashes)
    }

    /// The KV key of every position of a prompt.
    fn prompt_keys(&self, prompt: &Prompt, hashes: &[ImageHash]) -> Vec<PosKey> {
        let mut keys = Vec::new();
        for part in &prompt.parts {
            match part {
                PromptPart::Tokens(t) => keys.extend(t.iter().map(|&t| PosKey::Token(t))),
                PromptPart::Image(i) => {
                    let hash = hashes[*i];
                    let rows = self.images.entries.get(&hash).map_or(0, |e| e.info.tokens);
                    keys.extend((0..rows as u32).map(|r| PosKey::Image(hash, r)));
                }
            }
        }
        keys
    }

    /// Makes sure the embeddings of every image with positions from `from` on are in the
    /// model (an evicted one is prepared again), and returns each image's id.
    fn image_ids(
        &mut self,
        prompt: &Prompt,
        hashes: &[ImageHash],
        from: usize,
    ) -> Result<Vec<ImageId>> {
        let mut at = 0;
        for part in &prompt.parts {
            match part {
                PromptPart::Tokens(t) => at += t.len(),
                PromptPart::Image(i) => {
                    let hash = hashes[*i];
                    let rows = self.images.entries.get(&hash).map_or(0, |e| e.info.tokens);
                    let evicted = self
                        .images
                        .entries
                        .get(&hash)
                        .is_some_and(|e| e.id.is_none());
                    if at + rows > from && evicted {
                        let path = &prompt.images[*i];
                        let t0 = Instant::now();
                        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                        self.prepare_bytes(path, &bytes, hash, t0)?;
                    }
                    at += rows;
                }
            }
        }
        // Images wholly inside the reused prefix are never read: any id does for them.
        Ok(hashes
            .iter()
            .map(|h| {
                self.images
                    .entries
                    .get(h)
                    .and_then(|e| e.id)
                    .unwrap_or(ImageId(u64::MAX))
            })
            .collect())
    }

    /// Low-level generation from token ids (no template, no images).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        cancelled: &dyn Fn() -> bool,
        on_token: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<Generation> {
        self.kv.clear();
        let opts = GenerateOptions {
            prefill_chunk: self.prefill_chunk,
            ..Default::default()
        };
        generate::generate_with(
            self.model.as_mut(),
            &[Segment::Tokens(prompt)],
            params,
            &self.stop_ids,
            &opts,
            cancelled,
            on_token,
        )
    }

    /// One chat turn: template, images, generation, text. `on_text(id, piece)` gets each
    /// token with the text it completes (possibly empty); returns the generation and the
    /// whole answer.
    pub fn chat(
        &mut self,
        prompt: &Prompt,
        params: &SamplingParams,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(u32, &str),
    ) -> Result<(Generation, String)> {
        self.chat_from(Instant::now(), prompt, params, cancelled, on_text)
    }

    /// [`Session::chat`] for a turn requested at `turn_start` (the origin of its timeline and
    /// time to first token). Images come from the cache when they were prepared (or used)
    /// before; the longest prefix of the prompt that the KV cache already holds — text and
    /// images compared token by token and by content — is kept, and only the rest is
    /// prefilled.
    pub fn chat_from(
        &mut self,
        turn_start: Instant,
        prompt: &Prompt,
        params: &SamplingParams,
        cancelled: &dyn Fn() -> bool,
        on_text: &mut dyn FnMut(u32, &str),
    ) -> Result<(Generation, String)> {
        let hashes = self.prompt_images(prompt)?;
        let keys = self.prompt_keys(prompt, &hashes);
        let mut reuse = if self.prefix_reuse {
            self.kv
                .iter()
                .zip(&keys)
                .take_while(|(a, b)| a == b)
                .count()
        } else {
            0
        };
        // At least one position runs: its logits give the first token.
        reuse = reuse.min(keys.len().saturating_sub(1));
        let ids = self.image_ids(prompt, &hashes, reuse)?;
        let segments = segments_of(prompt, &ids, &self.images, &hashes);
        // Until the turn ends the cache holds a mix; on failure nothing is reused.
        self.kv.clear();

        let mut stream = TextStream::default();
        let mut text = String::new();
        let tokenizer = &self.tokenizer;
        let opts = GenerateOptions {
            reuse,
            prefill_chunk: self.prefill_chunk,
            clock: Some(turn_start),
        };
        let mut generation = generate::generate_with(
            self.model.as_mut(),
            &segments,
            params,
            &self.stop_ids,
            &opts,
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

        let n = generation.kv_positions;
        let mut kv = keys[..n.min(keys.len())].to_vec();
        let fed = n.saturating_sub(keys.len());
        kv.extend(
            generation
                .tokens
                .iter()
                .take(fed)
                .map(|&t| PosKey::Token(t)),
        );
        self.kv = kv;

        let m = &mut generation.metrics;
        m.images = prompt.images.len();
        self.image_timeline(turn_start, &hashes, m);
        m.weight_bytes = self.model.weight_bytes();
        m.kv_cache_bytes = self.model.kv_bytes();
        m.process_memory_bytes = process_memory_bytes();
        Ok((generation, text))
    }

    /// Adds to a turn's metrics the image work done for its images — now or ahead of the
    /// request — not shown on an earlier turn: preprocessing and every encode batch.
    fn image_timeline(&mut self, origin: Instant, hashes: &[ImageHash], m: &mut TurnMetrics) {
        let finished = self.model.take_encode_spans();
        self.images.spans.extend(finished);
        let mut spans = Vec::new();
        let mut seen = Vec::new();
        for (k, hash) in hashes.iter().enumerate() {
            if seen.contains(hash) {
                continue;
            }
            seen.push(*hash);
            let Some(e) = self.images.entries.get_mut(hash) else {
                continue;
            };
            if !e.reported
                && let Some((a, b)) = e.preprocess
            {
                e.reported = true;
                m.image_preprocess_ms += ms_between(a, b);
                spans.push(Span {
                    stage: Stage::ImagePreprocess,
                    start_ms: offset_ms(origin, a),
                    end_ms: offset_ms(origin, b),
                    label: format!(
                        "image {}: {}×{} → {}×{} tiles{}",
                        k + 1,
                        e.info.width,
                        e.info.height,
                        e.info.grid.cols,
                        e.info.grid.rows,
                        if e.info.thumbnail { " + thumbnail" } else { "" }
                    ),
                    tokens: 0,
                });
            }
            let Some(id) = e.id else { continue };
            let passes = e.info.passes;
            let mut rest = Vec::new();
            for s in self.images.spans.drain(..) {
                if s.image != id {
                    rest.push(s);
                    continue;
                }
                m.vision_encode_ms += ms_between(s.start, s.vision_end);
                m.projector_ms += ms_between(s.vision_end, s.end);
                let label = format!(
                    "image {}: passes {}–{} of {passes}",
                    k + 1,
                    s.first + 1,
                    s.first + s.count
                );
                spans.push(Span {
                    stage: Stage::VisionEncode,
                    start_ms: offset_ms(origin, s.start),
                    end_ms: offset_ms(origin, s.vision_end),
                    label: label.clone(),
                    tokens: s.count,
                });
                spans.push(Span {
                    stage: Stage::Projector,
                    start_ms: offset_ms(origin, s.vision_end),
                    end_ms: offset_ms(origin, s.end),
                    label,
                    tokens: s.count,
                });
            }
            self.images.spans = rest;
        }
        // Spans of images no turn has used yet wait for one; keep the list bounded.
        let excess = self.images.spans.len().saturating_sub(256);
        self.images.spans.drain(..excess);
        spans.append(&mut m.timeline);
        spans.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        m.timeline = spans;
    }

    /// Runs `tokens` at positions `pos0..` on top of the KV cache already filled for
    /// positions `0..pos0`, returning the last position's logits.
    pub fn forward_last(&mut self, tokens: &[u32], pos0: usize) -> Result<Vec<f32>> {
        self.kv.clear();
        self.model
            .forward(&[Segment::Tokens(tokens)], pos0, Logits::Last)
    }

    /// Logits for every position of `ids` run from position 0, `[ids.len() × vocab]`.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.kv.clear();
        self.model.forward(&[Segment::Tokens(ids)], 0, Logits::All)
    }

    /// Logits for every position of a prompt (images spliced in), `[positions × vocab]`.
    pub fn prompt_logits(&mut self, prompt: &Prompt) -> Result<Vec<f32>> {
        let hashes = self.prompt_images(prompt)?;
        let ids = self.image_ids(prompt, &hashes, 0)?;
        let segments = segments_of(prompt, &ids, &self.images, &hashes);
        self.kv.clear();
        self.model.forward(&segments, 0, Logits::All)
    }

    /// Whether this model reads images.
    pub fn is_vision_model(&self) -> bool {
        self.spec.family != Family::TextOnly
    }
}

/// Loads the model on the CPU or the GPU backend (`kind` is not `Auto`), its vision tower
/// on `opts.vision_backend` when that names the other one.
fn load_model(
    kind: BackendKind,
    opts: &LoadOptions,
    spec: &ModelSpec,
    src: &dyn TensorSource,
    quant: QuantPolicy,
    context_len: usize,
) -> Result<Box<dyn Model>> {
    let gpu = || GpuBackend::new(&GpuOptions::default());
    let cpu = || CpuBackend::with_kv(opts.threads, opts.kv_precision());
    let llm_on_gpu = kind == BackendKind::Gpu;
    let vision_on_gpu = match opts.vision_backend {
        Some(BackendKind::Gpu) => true,
        Some(BackendKind::Cpu) => false,
        None | Some(BackendKind::Auto) => llm_on_gpu,
    };
    Ok(match (llm_on_gpu, vision_on_gpu) {
        (true, true) => Box::new(Vlm::load(gpu()?, spec, src, quant, context_len)?),
        (true, false) => Box::new(Vlm::load_split(
            gpu()?,
            cpu()?,
            spec,
            src,
            quant,
            context_len,
        )?),
        (false, true) => Box::new(Vlm::load_split(
            cpu()?,
            gpu()?,
            spec,
            src,
            quant,
            context_len,
        )?),
        (false, false) => {
            let mut vlm = Vlm::load(cpu()?, spec, src, quant, context_len)?;
            // On the CPU the vision tower gets a thread of its own, so images encode while
            // the engine does other work (the prefill of text and of tiles already encoded,
            // or nothing while the user types). GPU command streams are recorded from one
            // thread, so there tiles are encoded inline, interleaved with the prefill.
            vlm.run_vision_on_thread()?;
            Box::new(vlm)
        }
    })
}

/// Milliseconds of one decode step (greedy, at position 0), the median of three after a
/// warm-up step that builds the GPU pipelines. The KV entry it writes is overwritten by
/// the next prompt, which starts at position 0.
fn time_decode_step(model: &mut dyn Model) -> Result<f64> {
    model.forward_argmax(&[Segment::Tokens(&[0])], 0)?;
    let mut ms = [0.0; 3];
    for m in &mut ms {
        let t = Instant::now();
        model.forward_argmax(&[Segment::Tokens(&[0])], 0)?;
        *m = ms_since(t);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[1])
}

/// `--backend auto`: the model on the backend with the faster decode step, and a note
/// with both timings. Without a usable GPU the CPU model is kept and the reason logged.
fn pick_faster(
    gpu: Result<Box<dyn Model>>,
    mut cpu: Box<dyn Model>,
) -> Result<(Box<dyn Model>, Option<String>)> {
    let mut gpu = match gpu {
        Ok(m) => m,
        Err(e) => {
            log::info!("backend auto: using the CPU ({e})");
            return Ok((cpu, Some(format!("auto: {e}; using the CPU"))));
        }
    };
    let gpu_ms = time_decode_step(gpu.as_mut())?;
    let cpu_ms = time_decode_step(cpu.as_mut())?;
    let note = format!(
        "auto: decode step {gpu_ms:.2} ms on {} vs {cpu_ms:.2} ms on {}",
        gpu.backend_name(),
        cpu.backend_name()
    );
    log::info!("backend {note}");
    Ok(if gpu_ms < cpu_ms {
        (gpu, Some(note))
    } else {
        (cpu, Some(note))
    })
}

/// A prompt as model segments: every image placeholder becomes all of its image's rows.
fn segments_of<'a>(
    prompt: &'a Prompt,
    ids: &[ImageId],
    cache: &ImageCache,
    hashes: &[ImageHash],
) -> Vec<Segment<'a>> {
    prompt
        .parts
        .iter()
        .map(|p| match p {
            PromptPart::Tokens(t) => Segment::Tokens(t),
            PromptPart::Image(i) => Segment::Image {
                id: ids[*i],
                rows: 0..cache.entries.get(&hashes[*i]).map_or(0, |e| e.info.tokens),
            },
        })
        .collect()
}
