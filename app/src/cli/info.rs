//! `pocketvlm info`: what a model is, without generating anything.

use clap::Args;
use pocketvlm_engine::Session;

use super::ModelArgs;
use super::run::{human_bytes, human_count};

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let session = Session::load(&args.model.model, &args.model.load_options())?;
    let info = session.info();
    let cfg = session.model().llm_config();
    let dtypes: Vec<String> = info
        .dtypes
        .iter()
        .map(|(d, n)| format!("{d} ×{n}"))
        .collect();
    println!("path:          {}", info.path.display());
    println!("family:        {}", info.family);
    if let Some(v) = &session.spec().vision {
        let t = &v.tower;
        println!(
            "vision tower:  {:?}, {} of {} layers run, width {}, {} px, patch {} → {} image tokens ({:?} projector)",
            t.kind,
            v.layers_to_run,
            t.num_layers,
            t.hidden_size,
            t.image_size,
            t.patch_size,
            v.image_tokens(),
            v.projector
        );
        println!(
            "preprocess:    {:?} to {} px{}, mean {:?}, std {:?}",
            v.processor.resize,
            v.processor.size,
            v.processor
                .pad_fill
                .map(|f| format!(" after padding to a square with {f:?}"))
                .unwrap_or_default(),
            v.processor.mean,
            v.processor.std
        );
        println!("image token:   {:?}", v.placeholder);
    }
    println!("prompt format: {:?}", session.spec().template);
    println!(
        "language model: {} layers, hidden {}, {} heads ({} kv), head dim {}, ffn {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size
    );
    println!("parameters:    {}", human_count(info.params));
    println!(
        "weights:       {} ({})",
        human_bytes(info.weight_bytes),
        dtypes.join(", ")
    );
    println!("context:       {} tokens", info.context_len);
    println!(
        "rope:          theta {}, {} of {} dims rotated, scaling {:?}",
        cfg.rope.theta, cfg.rope.rotary_dim, cfg.head_dim, cfg.rope.scaling
    );
    println!("tied head:     {}", cfg.tie_word_embeddings);
    let tok = session.tokenizer();
    println!(
        "tokenizer:     {} ({} tokens)",
        tok.path().display(),
        tok.vocab_size()
    );
    println!("stop ids:      {:?}", session.stop_ids());
    match &tok.chat_template {
        Some(t) => println!("chat template: {} chars", t.source().len()),
        None => println!("chat template: none (prompts are sent as raw text)"),
    }
    println!("backend:       {}", info.backend);
    if let Some(v) = &info.vision_backend {
        println!("vision on:     {v}");
    }
    Ok(())
}
