//! Reading models from disk: safetensors and PyTorch checkpoints, GGUF files, config.json,
//! tokenizers.

pub mod gguf;
pub mod gguf_model;
pub mod gguf_tokenizer;
pub mod hf;
pub mod pytorch;
pub mod safetensors;
pub mod source;
pub mod spec;
pub mod spm;
pub mod tokenizer;
