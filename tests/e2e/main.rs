//! End-to-end tests: the engine against the transformers oracle fixtures.

mod bad_inputs;
mod bluelm;
mod cpu_kernels;
mod demo;
mod engine_thread;
mod gguf;
mod gpu;
mod image;
mod latency;
mod llama;
mod pytorch_bin;
mod quant;
mod reliability;
mod smollm2;
mod spm;
mod tokenizer;
mod vlm;
mod vlm_pipeline;
