//! `pocketvlm bench`: load, vision, projector, prefill and decode timings, peak memory and
//! the decode memory-roofline ratio of one model (a file, or `--synthetic NAME`: random
//! weights with a real model's shapes, built in memory).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use pocketvlm_engine::backend::cpu::{CpuBackend, KvPrecision};
use pocketvlm_engine::bench::{self, BenchConfig, BenchReport};
use pocketvlm_engine::model::synthetic;
use pocketvlm_engine::tensor::DType;
use pocketvlm_engine::{BackendKind, LoadOptions, Session};

use super::parse_dtype;
use super::run::human_bytes;
use super::scenario::{self, Scenario};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A Hugging Face checkpoint directory or a GGUF file (or use --synthetic).
    #[arg(long, short, required_unless_present = "synthetic")]
    model: Option<PathBuf>,
    /// Random weights with a real model's shapes: mobilevlm-v2-1.7b, mobilevlm-v2-3b,
    /// imp-v1-3b, imp-v1.5-2b-qwen, smollm2-135m.
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    /// With a GGUF language model: llama.cpp's CLIP projector file.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// Encode this image before the prompt (vision models; with --synthetic the file is
    /// preprocessed with the model's processor).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Prompt tokens to prefill (random ids).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// CPU threads (default: the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Run the vision tower and projector on cpu or gpu (default: beside the language model).
    #[arg(long, value_parser = super::parse_vision_backend)]
    vision_backend: Option<BackendKind>,
    /// Language-model matrices as q4_0, q4_1, q8_0, f16 or f32 (synthetic default: q4_0;
    /// files: as stored).
    #[arg(long, value_parser = parse_dtype)]
    quant: Option<DType>,
    /// Vision tower and projector matrices (synthetic default: f16).
    #[arg(long, value_parser = parse_dtype)]
    vision_quant: Option<DType>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Skip the memory-bandwidth measurement (roofline_ratio is then 0).
    #[arg(long)]
    no_bandwidth: bool,
    /// Run a latency scenario through the chat API instead: `pre-encode` (TTFT with the
    /// image encoded while typing vs sent with the prompt), `follow-up` (second-turn TTFT
    /// with and without prefix reuse) or `all`; prints each turn's stage timeline.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Positions per prefill chunk (default 128).
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// KV cache on the CPU: f16 (default) or f32.
    #[arg(long, value_parser = super::parse_kv_cache)]
    kv_cache: Option<KvPrecision>,
    /// With --synthetic: write the language model as a llama GGUF to this file and exit
    /// (to run the same shapes in llama.cpp).
    #[arg(long, requires = "synthetic")]
    write_gguf: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let (Some(name), Some(out)) = (&args.synthetic, &args.write_gguf) {
        let dtype = args.quant.unwrap_or(DType::Q4_0);
        let n = synthetic::write_llama_gguf(name, dtype, out)?;
        eprintln!("wrote {} ({}) to {}", name, human_bytes(n), out.display());
        return Ok(());
    }
    if let Some(which) = args.scenario {
        let opts = LoadOptions {
            backend: args.backend,
            threads: args.threads,
            quant: args.quant,
            vision_quant: args.vision_quant,
            mmproj: args.mmproj.clone(),
            prefill_chunk: args.prefill_chunk,
            vision_backend: args.vision_backend,
            kv_cache: args.kv_cache,
            ..Default::default()
        };
        let mut session = match (&args.synthetic, &args.model) {
            (Some(name), _) => Session::load_synthetic(name, &opts)?,
            (None, Some(path)) => Session::load(path, &opts)?,
            (None, None) => bail!("give --model PATH or --synthetic NAME"),
        };
        return scenario::run(&mut session, which, args.gen_tokens, args.json);
    }
    let cfg_for = |pixels| BenchConfig {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        pixels,
        measure_bandwidth: !args.no_bandwidth,
    };
    let mut opts = LoadOptions {
        backend: args.backend,
        threads: args.threads,
        context_len: Some(args.prompt_tokens + args.gen_tokens + 1024),
        quant: args.quant,
        vision_quant: args.vision_quant,
        mmproj: args.mmproj.clone(),
        vision_backend: args.vision_backend,
        kv_cache: args.kv_cache,
        ..Default::default()
    };
    let (mut session, label) = if let Some(name) = &args.synthetic {
        let spec = synthetic::spec(name)?;
        opts.context_len = Some(image_rows(&spec) + args.prompt_tokens + args.gen_tokens + 32);
        let label = format!("synthetic {name} ({})", args.quant.unwrap_or(DType::Q4_0));
        (Session::load_synthetic(name, &opts)?, label)
    } else {
        let Some(path) = &args.model else {
            bail!("give --model PATH or --synthetic NAME")
        };
        (Session::load(path, &opts)?, path.display().to_string())
    };
    let pixels = match &args.image {
        Some(p) => Some(
            session
                .image_pixels(p)
                .with_context(|| format!("preprocessing {}", p.display()))?,
        ),
        None => None,
    };
    let spec = session.spec().clone();
    let load_ms = session.info().load_ms;
    // The bandwidth probe streams host memory: it is the roofline of the CPU backend only.
    let on_cpu = session.info().adapter.is_none();
    let mut cfg = cfg_for(pixels);
    cfg.measure_bandwidth &= on_cpu;
    let be = CpuBackend::new(args.threads)?;
    let report = bench::run(session.model_mut(), &spec, &label, load_ms, &cfg, &be)?;
    print(&report, args.json)
}

fn image_rows(spec: &pocketvlm_engine::model::spec::ModelSpec) -> usize {
    spec.vision.as_ref().map_or(0, |v| v.image_tokens())
}

fn print(r: &BenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", r.to_json());
        return Ok(());
    }
    println!("model:      {} on {}", r.model, r.backend);
    if let Some(v) = &r.vision_backend {
        println!("vision on:  {v}");
    }
    println!("load:       {:.0} ms", r.load_ms);
    if r.vision_ms > 0.0 {
        println!(
            "vision:     {:.0} ms, projector {:.1} ms",
            r.vision_ms, r.projector_ms
        );
    }
    println!(
        "prefill:    {} positions at {:.1} tok/s (first token after {:.0} ms)",
        r.prefill_positions, r.prefill_tok_s, r.ttft_ms
    );
    println!(
        "decode:     {} tokens at {:.2} tok/s",
        r.gen_tokens, r.decode_tok_s
    );
    println!(
        "memory:     peak RSS {} = {:.2} × (weights {} + KV {} + activations {})",
        human_bytes(r.peak_rss_bytes as usize),
        r.rss_ratio,
        human_bytes(r.weight_bytes),
        human_bytes(r.kv_bytes),
        human_bytes(r.activation_bytes)
    );
    if r.mem_bandwidth_gb_s > 0.0 {
        println!(
            "roofline:   {:.2} ({} per token × {:.2} tok/s vs {:.1} GB/s streaming read; \
             {} decode runs, each between two read passes, median pass)",
            r.roofline_ratio,
            human_bytes(r.decode_weight_bytes),
            r.roofline_decode_tok_s,
            r.mem_bandwidth_gb_s,
            pocketvlm_engine::bench::ROOFLINE_ROUNDS
        );
    }
    Ok(())
}
