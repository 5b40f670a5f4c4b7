//! `pocketvlm embed-image`: an image's embeddings as f32 little-endian `[tokens × width]`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pocketvlm_engine::Session;

use super::ModelArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Stage {
    /// The vision tower's selected layer (before the projector).
    Vision,
    /// The projector's output: what the language model receives.
    Projector,
}

#[derive(Args, Debug)]
pub struct EmbedImageArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    image: PathBuf,
    #[arg(long, value_enum, default_value = "projector")]
    stage: Stage,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: EmbedImageArgs) -> anyhow::Result<()> {
    let mut session = Session::load(&args.model.model, &args.model.load_options())?;
    let pixels = session.image_pixels(&args.image)?;
    let values = match args.stage {
        Stage::Vision => session.model_mut().vision_features(&pixels)?,
        Stage::Projector => {
            let id = session.model_mut().encode_image(&pixels)?;
            let rows = session.model().image_embeddings(id)?;
            session.model_mut().release_image(id);
            rows
        }
    };
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args.out, bytes).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} f32 values to {}",
        values.len(),
        args.out.display()
    );
    Ok(())
}
