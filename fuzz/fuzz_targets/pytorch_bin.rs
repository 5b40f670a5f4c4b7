//! The restricted torch.save reader: ZIP, the tensor-only pickle subset, tensor views.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pocketvlm_engine::load::pytorch::PytorchFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = PytorchFile::from_bytes(Path::new("fuzz.bin"), data) else {
        return;
    };
    let names: Vec<String> = file.names().map(str::to_string).collect();
    for name in names.iter().take(8) {
        let _ = file.tensor(name);
    }
});
