//! `pocketvlm quantize`: a checkpoint directory in, a quantised one (or a GGUF file) out.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use pocketvlm_engine::quantize::{quantize_checkpoint, write_gguf};
use pocketvlm_engine::tensor::DType;

use super::run::human_bytes;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face checkpoint directory.
    #[arg(long, short)]
    model: PathBuf,
    /// Format of the language model's matrices: q4_0, q4_1, q8_0, f16 or f32.
    #[arg(long, value_parser = super::parse_dtype)]
    to: DType,
    /// Format of the vision tower's and projector's matrices (default: as stored).
    #[arg(long, value_parser = super::parse_dtype)]
    vision_to: Option<DType>,
    /// Output: a new directory, or with --gguf a .gguf file.
    #[arg(long)]
    out: PathBuf,
    /// Write a llama.cpp GGUF file of the language model instead of a directory.
    #[arg(long)]
    gguf: bool,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let report = if args.gguf {
        if args.vision_to.is_some() {
            bail!(
                "--vision-to applies to directory output; a GGUF file holds the language model only"
            );
        }
        write_gguf(&args.model, &args.out, args.to)?
    } else {
        quantize_checkpoint(&args.model, &args.out, args.to, args.vision_to)?
    };
    eprintln!(
        "{} tensors ({} converted): {} → {} written to {}",
        report.tensors,
        report.converted,
        human_bytes(report.bytes_in),
        human_bytes(report.bytes_out),
        args.out.display()
    );
    Ok(())
}
