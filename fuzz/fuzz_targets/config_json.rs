//! config.json → model spec (language model, vision tower, projector, preprocessing).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pocketvlm_engine::load::spec::model_spec_from_json;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = model_spec_from_json(Path::new("/nonexistent-fuzz-dir"), &json);
    }
});
