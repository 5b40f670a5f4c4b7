//! Reading models from disk: safetensors checkpoints, config.json, tokenizers.

pub mod hf;
pub mod pytorch;
pub mod safetensors;
pub mod tokenizer;
