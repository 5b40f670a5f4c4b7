//! GGUF header, metadata → model spec, tokenizer rebuilt from `tokenizer.ggml.*`, and
//! every tensor read back (k-quants dequantised): typed errors only, never a panic.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pocketvlm_engine::load::gguf::GgufFile;
use pocketvlm_engine::load::{gguf_model, gguf_tokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data) else {
        return;
    };
    let _ = gguf_model::model_spec(&file, None);
    let _ = gguf_model::vision_spec(&file);
    if let Ok(tok) = gguf_tokenizer::tokenizer(&file) {
        let _ = tok.encode("Hello, world! 😀", true);
    }
    let names: Vec<String> = file.tensors.keys().cloned().collect();
    for name in names.iter().take(8) {
        let _ = file.tensor(name);
    }
});
