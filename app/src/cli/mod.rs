//! Command-line subcommands, one file each. The contract (flags, output formats) is in
//! ARCHITECTURE.md; tests and benchmarks rely on it.

mod bench;
mod embed_image;
mod info;
mod logits;
mod quantize;
mod run;
mod scenario;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pocketvlm_engine::backend::cpu::KvPrecision;
use pocketvlm_engine::tensor::DType;
use pocketvlm_engine::{BackendKind, LoadOptions};

#[derive(Parser, Debug)]
#[command(
    name = "pocketvlm",
    version,
    about = "Chat with small vision-language models, locally"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Commands>,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Generate an answer, streaming text to stdout and timings to stderr.
    Run(run::RunArgs),
    /// Write the logits for every position of a token sequence (f32 LE, positions × vocab).
    Logits(logits::LogitsArgs),
    /// Describe a model: family, sizes, dtypes, tokenizer, template.
    Info(info::InfoArgs),
    /// Write an image's embeddings (projector output, or the vision tower's selected layer).
    EmbedImage(embed_image::EmbedImageArgs),
    /// Quantise a checkpoint to a new directory, or to a llama.cpp GGUF file.
    Quantize(quantize::QuantizeArgs),
    /// Time load, vision, prefill and decode; peak memory; the decode roofline ratio.
    Bench(bench::BenchArgs),
}

/// Options shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face checkpoint directory, or a GGUF file.
    #[arg(long, short)]
    model: PathBuf,
    /// With a GGUF language model: llama.cpp's CLIP projector file (MobileVLM).
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// Where to run: cpu, gpu or auto.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Run the vision tower and projector on cpu or gpu instead (default: beside the
    /// language model); it then encodes on a thread of its own while the LLM prefills.
    #[arg(long, value_parser = parse_vision_backend)]
    vision_backend: Option<BackendKind>,
    /// CPU threads (default: all available).
    #[arg(long)]
    threads: Option<usize>,
    /// Context window in tokens (default: the model's maximum).
    #[arg(long = "ctx")]
    context: Option<usize>,
    /// Store the language model's weight matrices as q4_0, q4_1, q8_0, f16 or f32
    /// (default: as in the file).
    #[arg(long, value_parser = parse_dtype)]
    quant: Option<DType>,
    /// The same for the vision tower and projector.
    #[arg(long, value_parser = parse_dtype)]
    vision_quant: Option<DType>,
    /// Prompt positions per prefill call (default 128); Cancel waits for at most one.
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// KV cache on the CPU: f16 (default, half the memory) or f32 (exact).
    #[arg(long, value_parser = parse_kv_cache)]
    kv_cache: Option<KvPrecision>,
}

/// `--kv-cache`: f16 or f32.
pub fn parse_kv_cache(s: &str) -> Result<KvPrecision, String> {
    KvPrecision::parse(s)
        .ok_or_else(|| format!("unknown KV-cache format `{s}` (expected f16 or f32)"))
}

pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match DType::parse(s) {
        Some(DType::BF16) | None => Err(format!(
            "unknown format `{s}` (expected q4_0, q4_1, q8_0, f16 or f32)"
        )),
        Some(d) => Ok(d),
    }
}

/// `--vision-backend`: a backend named outright (auto decides for the language model only).
pub fn parse_vision_backend(s: &str) -> Result<BackendKind, String> {
    match s.parse::<BackendKind>()? {
        BackendKind::Auto => {
            Err("the vision backend is cpu or gpu (auto applies to --backend)".into())
        }
        kind => Ok(kind),
    }
}

impl ModelArgs {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            backend: self.backend,
            threads: self.threads,
            context_len: self.context,
            quant: self.quant,
            vision_quant: self.vision_quant,
            mmproj: self.mmproj.clone(),
            prefill_chunk: self.prefill_chunk,
            vision_backend: self.vision_backend,
            kv_cache: self.kv_cache,
            ..Default::default()
        }
    }
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Commands::Run(a)) => run::run(a),
        Some(Commands::Logits(a)) => logits::run(a),
        Some(Commands::Info(a)) => info::run(a),
        Some(Commands::EmbedImage(a)) => embed_image::run(a),
        Some(Commands::Quantize(a)) => quantize::run(a),
        Some(Commands::Bench(a)) => bench::run(a),
        None => pocketvlm::gui::run(),
    }
}
