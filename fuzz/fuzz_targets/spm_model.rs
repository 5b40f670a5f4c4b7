//! SentencePiece tokenizer.model files (protobuf) and encoding with the result.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pocketvlm_engine::load::spm::SpmModel;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = SpmModel::from_bytes(data) {
        let ids = model.encode("Hello, world! 😀 東京\n  x");
        let _ = model.decode(&ids);
    }
});
