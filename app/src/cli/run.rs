//! `pocketvlm run`: one chat turn through the engine thread, streamed to stdout.

use std::io::Write;

use anyhow::{Context, bail};
use clap::Args;
use pocketvlm_engine::{
    Command, Engine, Event, GenerateRequest, Message, SamplingParams, StopReason,
};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user's message.
    #[arg(long, short)]
    prompt: String,
    /// Images to attach to the message (repeatable).
    #[arg(long)]
    image: Vec<std::path::PathBuf>,
    /// A system message placed before the prompt.
    #[arg(long)]
    system: Option<String>,
    /// Send the prompt as is, without the model's chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy (default: the model's generation_config.json).
    #[arg(long = "temp")]
    temperature: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    repeat_penalty: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
}

impl RunArgs {
    fn sampling(&self, defaults: &SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            repetition_penalty: self.repeat_penalty.unwrap_or(defaults.repetition_penalty),
            seed: self.seed,
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut engine = Engine::spawn();
    engine.send(Command::Load {
        path: args.model.model.clone(),
        options: args.model.load_options(),
    })?;
    let info = loop {
        match engine.events().recv().context("engine thread stopped")? {
            Event::Loaded(info) => break info,
            Event::Error(e) => return Err(e.into()),
            _ => {}
        }
    };
    if let Some(choice) = &info.auto_choice {
        eprintln!("backend auto: {choice}");
    }
    eprintln!(
        "loaded {} ({} params, {}) in {:.0} ms on {}",
        info.family,
        human_count(info.params),
        human_bytes(info.weight_bytes),
        info.load_ms,
        info.backend
    );
    if let Some(v) = &info.vision_backend {
        eprintln!("vision tower on {v}");
    }

    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(Message::system(s.clone()));
    }
    let mut user = Message::user(args.prompt.clone());
    user.images = args.image.clone();
    messages.push(user);
    engine.send(Command::Generate(GenerateRequest {
        messages,
        params: args.sampling(&info.default_sampling),
        raw: args.raw,
    }))?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        match engine.events().recv().context("engine thread stopped")? {
            Event::Token { text, .. } => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Finished { stop, metrics, .. } => {
                writeln!(out)?;
                let m = &metrics;
                eprintln!(
                    "prompt {} tok in {:.1} ms ({:.1} tok/s) | first token {:.1} ms | {} tok at {:.1} tok/s | stop: {}",
                    m.prompt_tokens,
                    m.prefill_ms,
                    m.prefill_tok_s(),
                    m.ttft_ms,
                    m.generated_tokens,
                    m.decode_tok_s(),
                    match stop {
                        StopReason::Eos => "end of sequence",
                        StopReason::MaxTokens => "max tokens",
                        StopReason::Cancelled => "cancelled",
                        StopReason::ContextFull => "context full",
                    }
                );
                return Ok(());
            }
            Event::Error(e) => bail!(e),
            _ => {}
        }
    }
}

pub fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
