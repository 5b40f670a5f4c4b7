//! `pocketvlm logits`: f32 little-endian logits `[positions × vocab]` for a token sequence.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use pocketvlm_engine::{Message, Session};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "prompt",
        required_unless_present = "prompt"
    )]
    ids: Option<Vec<u32>>,
    /// A user message, rendered with the chat template (unless --raw) and tokenised.
    #[arg(long)]
    prompt: Option<String>,
    /// Tokenise --prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: LogitsArgs) -> anyhow::Result<()> {
    let mut session = Session::load(&args.model.model, &args.model.load_options())?;
    let ids = match (&args.ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(p)) => session.prompt_tokens(&[Message::user(p.clone())], args.raw)?,
        (None, None) => bail!("give --ids or --prompt"),
    };
    if ids.is_empty() {
        bail!("no tokens to run");
    }
    let logits = session.logits(&ids)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} positions × {} vocab f32 to {}",
        ids.len(),
        session.info().vocab_size,
        args.out.display()
    );
    Ok(())
}
