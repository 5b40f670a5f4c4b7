//! Reading models from disk: safetensors checkpoints, config.json, tokenizers.

pub mod gguf;
pub mod hf;
pub mod pytorch;
pub mod safetensors;
pub mod source;
pub mod spec;
pub mod tokenizer;
