//! Image decoding (JPEG/PNG/GIF/BMP/WebP, EXIF) and preprocessing for both families,
//! under tight decode limits so a decompression bomb is refused, not allocated.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pocketvlm_engine::image::{DecodeLimits, ImageProcessor, decode_image_with_limits};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_width: 2048,
        max_height: 2048,
        max_bytes: 64 << 20,
    };
    if let Ok(img) = decode_image_with_limits(data, Path::new("fuzz.img"), &limits) {
        let _ = ImageProcessor::mobilevlm(32).preprocess(&img);
        let _ = ImageProcessor::imp(30).preprocess(&img);
    }
});
