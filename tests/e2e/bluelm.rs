//! The bluelm-v family against its PyTorch reference (written from the BlueLM-V-3B paper in
//! `tests/reference/fixtures_bluelm.py`): dynamic-resolution tiles and their pixels, the
//! SigLIP features, the 2×2 token downsampler + MLP, and logits and greedy tokens with a
//! tiled image spliced in — plus the tile-grid rules against their Python reference on a
//! table of sizes.

use pocketvlm_engine::image::tiles::{TileGrid, llava_next_grid, relaxed_grid, upscale};
use pocketvlm_engine::model::spec::ImagePlaceholder;
use pocketvlm_engine::{LoadOptions, Message, PromptPart, SamplingParams, Session};
use pocketvlm_tests::{Reference, fixture, max_abs_diff};

pub const NAME: &str = "bluelm_tiny";
const IMAGES: [&str; 2] = ["shapes_square.png", "photo_wide.jpg"];
pub const QUESTION: &str = "What is shown in this image?";

pub fn load() -> Session {
    Session::load(&fixture(NAME), &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn image(i: usize) -> std::path::PathBuf {
    fixture("images").join(IMAGES[i])
}

fn assert_close(what: &str, got: &[f32], expected: &[f32]) {
    let (diff, scale) = max_abs_diff(got, expected);
    eprintln!("{what}: max|Δ| = {diff:.3e}, max|ref| = {scale:.3}");
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max|Δ| {diff} > 1e-4 × {scale}"
    );
}

fn grid_of(v: &serde_json::Value) -> TileGrid {
    TileGrid {
        cols: v[0].as_u64().unwrap() as usize,
        rows: v[1].as_u64().unwrap() as usize,
    }
}

#[test]
fn bluelm_v_is_detected_with_its_tiling() {
    let session = load();
    assert_eq!(session.info().family, "bluelm-v");
    let vision = session.spec().vision.as_ref().unwrap();
    let tiling = vision.tiling.expect("dynamic resolution");
    assert_eq!((tiling.tile, tiling.max_tiles), (54, 2));
    assert!(tiling.thumbnail);
    assert_eq!(vision.vision_batch, 2);
    // 27×27 SigLIP tokens, padded to 28×28, 2×2 → 196 per pass.
    assert_eq!(session.model().image_tokens(), Some(196));
}

#[test]
fn tiles_and_their_pixels_match_the_reference() {
    let reference = Reference::open(&fixture(NAME));
    let meta = reference.meta();
    let session = load();
    for i in 0..2 {
        let got = session.image_passes(&image(i)).unwrap();
        assert_eq!(got.grid, grid_of(&meta[format!("grid.{i}")]), "image {i}");
        let (shape, expected) = reference.f32(&format!("pixel_values.{i}"));
        assert_eq!(got.passes.len(), shape[0], "image {i} passes");
        let flat: Vec<f32> = got.passes.concat();
        // SigLIP's std is 0.5: a normalised difference of 2e-6 is 1e-6 in [0, 1] units.
        let (diff, _) = max_abs_diff(&flat, &expected);
        assert!(diff <= 2e-6, "image {i}: {diff}");
    }
    // The wide photo: a 2×1 grid (the relaxed rule) and the thumbnail.
    assert_eq!(meta["passes.1"], 3);
}

#[test]
fn downsampler_and_projector_match() {
    let reference = Reference::open(&fixture(NAME));
    let mut session = load();
    for i in 0..2 {
        let (shape, pixels) = reference.f32(&format!("pixel_values.{i}"));
        let per = pixels.len() / shape[0];
        let feats = session.model_mut().vision_features(&pixels[..per]).unwrap();
        let (_, expected) = reference.f32(&format!("vision_features.{i}"));
        assert_close(&format!("image {i} pass 1 features"), &feats, &expected);

        let passes: Vec<Vec<f32>> = pixels.chunks(per).map(<[f32]>::to_vec).collect();
        let model = session.model_mut();
        let id = model.begin_image(passes).unwrap();
        model.wait_image(id).unwrap();
        let rows = model.image_embeddings(id).unwrap();
        let (eshape, expected) = reference.f32(&format!("image_features.{i}"));
        assert_eq!(model.image_rows(id), Some(eshape[0]));
        assert_eq!(eshape[0], shape[0] * 196);
        assert_close(
            &format!("image {i} downsampled projector"),
            &rows,
            &expected,
        );
        model.release_image(id);
    }
}

#[test]
fn logits_and_greedy_from_the_image_file_match() {
    let reference = Reference::open(&fixture(NAME));
    let mut session = load();
    let messages = [Message::user(QUESTION).with_image(image(1))];
    let prompt = session.prompt(&messages, false).unwrap();
    let placeholder = match session.spec().vision.as_ref().unwrap().placeholder {
        ImagePlaceholder::VocabId(id) => i64::from(id),
        ImagePlaceholder::Sentinel => -200,
    };
    let flat: Vec<i64> = prompt
        .parts
        .iter()
        .flat_map(|p| match p {
            PromptPart::Tokens(t) => t.iter().map(|&t| i64::from(t)).collect(),
            PromptPart::Image(_) => vec![placeholder],
        })
        .collect();
    assert_eq!(flat, reference.i64("input_ids"));

    let vocab = session.info().vocab_size;
    let all = session.prompt_logits(&prompt).unwrap();
    let meta = reference.meta();
    assert_eq!(
        all.len() / vocab,
        meta["sequence_length"].as_u64().unwrap() as usize
    );
    let (shape, tail) = reference.f32("logits_tail");
    assert_close("logits", &all[all.len() - shape[0] * vocab..], &tail);

    let expected = reference.ids("generated_ids");
    let params = SamplingParams {
        max_tokens: expected.len(),
        ignore_eos: true,
        ..Default::default()
    };
    let (g, _) = session
        .chat(&prompt, &params, &|| false, &mut |_, _| {})
        .unwrap();
    assert_eq!(g.tokens, expected);
    // Three passes in batches of two: two encode spans on the timeline.
    let encodes = g
        .metrics
        .timeline
        .iter()
        .filter(|s| s.stage == pocketvlm_engine::metrics::Stage::VisionEncode)
        .count();
    assert_eq!(encodes, 2);
}

#[test]
fn dynamic_resolution_rules_match_the_python_reference() {
    let text = std::fs::read_to_string(fixture(NAME).join("dynamic_resolution.json")).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut differ = 0;
    for r in &rows {
        let n = |k: &str| r[k].as_u64().unwrap() as usize;
        let (w, h, tile, max) = (n("width"), n("height"), n("tile"), n("max_tiles"));
        let alpha = r["alpha"].as_f64().unwrap();
        let (ln, rx) = (grid_of(&r["llava_next"]), grid_of(&r["relaxed"]));
        assert_eq!(llava_next_grid(w, h, tile, max), ln, "LLaVA-NeXT {r}");
        assert_eq!(relaxed_grid(w, h, tile, max, alpha), rx, "relaxed {r}");
        if ln != rx {
            differ += 1;
            // Where the rules differ, the relaxed one gives fewer tiles (tokens) and never
            // enlarges the picture more.
            assert!(rx.tiles() < ln.tiles(), "{r}");
            assert!(upscale(w, h, rx, tile) <= upscale(w, h, ln, tile), "{r}");
        }
    }
    eprintln!(
        "{} sizes × settings, the rules differ on {differ}",
        rows.len()
    );
    assert!(
        rows.len() >= 300 && differ >= 20,
        "{differ} of {}",
        rows.len()
    );
    // The paper's examples: a near-square picture just over one tile, and 380×76, which
    // InternVL-1.5's ratio matching blows up 25× to 1920×384.
    assert_eq!(llava_next_grid(394, 390, 384, 9).tiles(), 4);
    assert_eq!(relaxed_grid(394, 390, 384, 9, 0.1).tiles(), 1);
    let g = relaxed_grid(380, 76, 384, 9, 0.1);
    assert!(upscale(380, 76, g, 384) < 5.0 / 1.0, "{g:?}");
}

#[test]
fn a_prompt_that_places_a_missing_image_is_an_error() {
    let mut session = load();
    let prompt = pocketvlm_engine::Prompt {
        parts: vec![PromptPart::Tokens(vec![1, 2]), PromptPart::Image(3)],
        images: vec![image(0)],
    };
    let err = session
        .chat(
            &prompt,
            &SamplingParams::default(),
            &|| false,
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, pocketvlm_engine::Error::InvalidArgument(_)),
        "{err}"
    );
    assert!(session.prompt_logits(&prompt).is_err());
}
