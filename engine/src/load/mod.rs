//! Reading models from disk: safetensors checkpoints, config.json, tokenizers.

pub mod hf;
pub mod safetensors;
pub mod spm;
pub mod tokenizer;
