//! `pocketvlm logits`: f32 little-endian logits `[positions × vocab]` for a prompt, with
//! image embeddings spliced in where the prompt places them.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use pocketvlm_engine::model::spec::ImagePlaceholder;
use pocketvlm_engine::{Message, Prompt, PromptPart, Session};

use super::ModelArgs;

/// The sentinel id LLaVA-style prompts use for an image (MobileVLM's IMAGE_TOKEN_INDEX).
const IMAGE_SENTINEL: i64 = -200;

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids; -200 (or the model's image token id) marks where the
    /// next --image goes.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        conflicts_with = "prompt",
        required_unless_present = "prompt"
    )]
    ids: Option<Vec<i64>>,
    /// A user message, rendered with the model's prompt template (unless --raw) and tokenised.
    #[arg(long)]
    prompt: Option<String>,
    /// Tokenise --prompt as is, without the template.
    #[arg(long)]
    raw: bool,
    /// Images, in the order of their placeholders.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

/// A prompt from explicit ids, splitting at image placeholders.
fn prompt_from_ids(session: &Session, ids: &[i64], images: Vec<PathBuf>) -> anyhow::Result<Prompt> {
    let image_id = match session.spec().vision.as_ref().map(|v| v.placeholder) {
        Some(ImagePlaceholder::VocabId(id)) => Some(i64::from(id)),
        _ => None,
    };
    let mut parts = vec![];
    let mut run = vec![];
    let mut n_images = 0;
    for &id in ids {
        if id == IMAGE_SENTINEL || Some(id) == image_id {
            parts.push(PromptPart::Tokens(std::mem::take(&mut run)));
            parts.push(PromptPart::Image(n_images));
            n_images += 1;
        } else {
            run.push(u32::try_from(id).with_context(|| format!("token id {id} is not valid"))?);
        }
    }
    parts.push(PromptPart::Tokens(run));
    if n_images != images.len() {
        bail!(
            "the ids hold {n_images} image placeholders but {} --image files were given",
            images.len()
        );
    }
    parts.retain(|p| !matches!(p, PromptPart::Tokens(t) if t.is_empty()));
    Ok(Prompt { parts, images })
}

pub fn run(args: LogitsArgs) -> anyhow::Result<()> {
    let mut session = Session::load(&args.model.model, &args.model.load_options())?;
    let prompt = match (&args.ids, &args.prompt) {
        (Some(ids), _) => prompt_from_ids(&session, ids, args.image.clone())?,
        (None, Some(p)) => {
            let mut message = Message::user(p.clone());
            message.images = args.image.clone();
            session.prompt(&[message], args.raw)?
        }
        (None, None) => bail!("give --ids or --prompt"),
    };
    if prompt.parts.is_empty() {
        bail!("no tokens to run");
    }
    let logits = session.prompt_logits(&prompt)?;
    let vocab = session.info().vocab_size;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} positions × {vocab} vocab f32 to {}",
        logits.len() / vocab,
        args.out.display()
    );
    Ok(())
}
