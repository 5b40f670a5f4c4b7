//! safetensors header (incl. PocketVLM's quantisation metadata) and tensor access.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pocketvlm_engine::load::safetensors::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::from_bytes(Path::new("fuzz.safetensors"), data) else {
        return;
    };
    let names: Vec<String> = file.names().map(str::to_string).collect();
    for name in names.iter().take(8) {
        if let Ok(t) = file.tensor(name) {
            if t.numel() < 1 << 16 {
                let _ = t.to_f32_vec();
            }
        }
    }
});
