//! Reading models from disk: safetensors checkpoints, config.json, tokenizers.

pub mod hf;
pub mod safetensors;
pub mod spec;
pub mod tokenizer;
