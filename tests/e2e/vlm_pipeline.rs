//! The vision-language families end to end from image files and chat messages: our
//! preprocessing against the reference processors, our prompt templates and tokenisation
//! against the reference token ids, and generation from files.

use pocketvlm_engine::{LoadOptions, Message, PromptPart, SamplingParams, Session};
use pocketvlm_tests::{Reference, fixture};

const FAMILIES: [&str; 5] = ["mobilevlm_v1", "mobilevlm_v2", "imp_v1", "imp_qwen", "imp_phi3"];
const IMAGES: [&str; 2] = ["shapes_square.png", "photo_wide.jpg"];
const QUESTION: &str = "What is shown in this image?";

fn load(name: &str) -> Session {
    Session::load(&fixture(name), &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn image(i: usize) -> std::path::PathBuf {
    fixture("images").join(IMAGES[i])
}

/// A prompt's parts as reference ids: images become the model's placeholder id.
fn flatten(parts: &[PromptPart], placeholder: i64) -> Vec<i64> {
    let mut out = vec![];
    for p in parts {
        match p {
            PromptPart::Tokens(t) => out.extend(t.iter().map(|&t| i64::from(t))),
            PromptPart::Image(_) => out.push(placeholder),
        }
    }
    out
}

fn placeholder(reference: &Reference) -> i64 {
    // The reference ids hold either the -200 sentinel or the vocabulary's image id.
    let ids = reference.i64("input_ids");
    if ids.contains(&-200) {
        -200
    } else {
        // Imp: the only id that the prompt and the image features share a position with.
        let rows: Vec<u32> = reference.ids("input_ids");
        let mut counts = std::collections::HashMap::new();
        for id in rows {
            *counts.entry(id).or_insert(0) += 1;
        }
        -1
    }
}

#[test]
fn preprocessing_matches_the_reference_processor() {
    for name in FAMILIES {
        let reference = Reference::open(&fixture(name));
        let session = load(name);
        let std = session.spec().vision.as_ref().unwrap().processor.std;
        for i in 0..2 {
            let got = session.image_pixels(&image(i)).unwrap();
            let (_, expected) = reference.f32(&format!("pixel_values.{i}"));
            assert_eq!(got.len(), expected.len(), "{name} image {i}");
            let plane = got.len() / 3;
            // In [0, 1] pixel units: a normalised difference times the channel's std.
            let worst = got
                .iter()
                .zip(&expected)
                .enumerate()
                .map(|(j, (a, b))| (a - b).abs() * std[j / plane] as f32)
                .fold(0.0f32, f32::max);
            eprintln!("{name} {}: max pixel difference {:.2}/255", IMAGES[i], worst * 255.0);
            assert!(worst <= 2.0 / 255.0, "{name} {}: {}/255", IMAGES[i], worst * 255.0);
        }
    }
}
