//! End-to-end tests: the engine against the transformers oracle fixtures.

mod bad_inputs;
mod cpu_kernels;
mod engine_thread;
mod image;
mod llama;
mod pytorch_bin;
mod spm;
mod tokenizer;
mod vlm;
