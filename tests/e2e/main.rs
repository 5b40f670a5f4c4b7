//! End-to-end tests: the engine against the transformers oracle fixtures.

mod bad_inputs;
mod engine_thread;
mod gpu;
mod llama;
mod pytorch_bin;
mod tokenizer;
mod vlm;
