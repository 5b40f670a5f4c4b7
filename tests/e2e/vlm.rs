//! Vision-language families against the reference pipelines (transformers towers and LMs,
//! MobileVLM's LDP/LDPv2 and Imp's MLP written from the repositories): vision features,
//! projector output, logits with the image spliced in, greedy continuations.
//!
//! These tests start from the reference `pixel_values`, so they check the models alone;
//! preprocessing has its own tests.

use pocketvlm_engine::Session;
use pocketvlm_engine::generate::{self, SamplingParams};
use pocketvlm_engine::model::spec::ImagePlaceholder;
use pocketvlm_engine::model::{ImageId, Logits, Segment};
use pocketvlm_tests::{Reference, exact, fixture, max_abs_diff};

const FAMILIES: [(&str, &str); 6] = [
    ("mobilevlm_v1", "mobilevlm"),
    ("mobilevlm_v2", "mobilevlm-v2"),
    ("imp_v1", "imp-phi2"),
    ("imp_qwen", "imp-qwen2"),
    ("imp_phi3", "imp-phi3"),
    // Imp-v1.5-3B-196's resolution reduction: a tower at 196 px, 14×14 = 196 tokens.
    ("imp_196", "imp-phi2"),
];

fn load(name: &str) -> Session {
    Session::load(&fixture(name), &exact()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_close(what: &str, got: &[f32], expected: &[f32]) {
    let (diff, scale) = max_abs_diff(got, expected);
    eprintln!("{what}: max|Δ| = {diff:.3e}, max|ref| = {scale:.3}");
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max|Δ| {diff} > 1e-4 × {scale}"
    );
}

/// The reference ids as model segments: every image placeholder (the -200 sentinel, or the
/// checkpoint's image token id) becomes the next encoded image's rows.
fn segments<'a>(
    session: &Session,
    ids: &[i64],
    runs: &'a mut Vec<Vec<u32>>,
    images: &[ImageId],
) -> Vec<Segment<'a>> {
    let image_id = match session.spec().vision.as_ref().unwrap().placeholder {
        ImagePlaceholder::VocabId(id) => i64::from(id),
        ImagePlaceholder::Sentinel => -200,
    };
    let rows = session.model().image_tokens().unwrap();
    runs.clear();
    runs.push(vec![]);
    for &id in ids {
        if id == image_id {
            runs.push(vec![]);
        } else {
            runs.last_mut().unwrap().push(id as u32);
        }
    }
    let mut out = vec![];
    for (i, run) in runs.iter().enumerate() {
        if i > 0 {
            out.push(Segment::Image {
                id: images[i - 1],
                rows: 0..rows,
            });
        }
        if !run.is_empty() {
            out.push(Segment::Tokens(run));
        }
    }
    out
}

#[test]
fn families_are_detected_from_config() {
    for (name, family) in FAMILIES {
        let session = load(name);
        assert_eq!(session.info().family, family, "{name}");
        assert!(session.is_vision_model());
    }
}

#[test]
fn vision_features_and_projector_match() {
    for (name, _) in FAMILIES {
        let reference = Reference::open(&fixture(name));
        let mut session = load(name);
        for i in 0..2 {
            let (_, pixels) = reference.f32(&format!("pixel_values.{i}"));
            let feats = session.model_mut().vision_features(&pixels).unwrap();
            let (_, expected) = reference.f32(&format!("vision_features.{i}"));
            assert_close(
                &format!("{name} image {i} vision features"),
                &feats,
                &expected,
            );

            let id = session.model_mut().encode_image(&pixels).unwrap();
            let rows = session.model().image_embeddings(id).unwrap();
            let (shape, expected) = reference.f32(&format!("image_features.{i}"));
            assert_eq!(session.model().image_tokens(), Some(shape[0]), "{name}");
            assert_close(&format!("{name} image {i} projector"), &rows, &expected);
        }
    }
}

fn check_logits_and_greedy(name: &str, prefix: &str, n_images: usize) {
    let reference = Reference::open(&fixture(name));
    let mut session = load(name);
    let images: Vec<ImageId> = (0..n_images)
        .map(|i| {
            let (_, pixels) = reference.f32(&format!("pixel_values.{i}"));
            session.model_mut().encode_image(&pixels).unwrap()
        })
        .collect();
    let ids = reference.i64(&format!("{prefix}input_ids"));
    let mut runs = vec![];
    let segs = segments(&session, &ids, &mut runs, &images);
    let vocab = session.info().vocab_size;

    let all = session.model_mut().forward(&segs, 0, Logits::All).unwrap();
    let (shape, tail) = reference.f32(&format!("{prefix}logits_tail"));
    assert_close(
        &format!("{name} {prefix}logits"),
        &all[all.len() - shape[0] * vocab..],
        &tail,
    );

    let expected = reference.ids(&format!("{prefix}generated_ids"));
    let params = SamplingParams {
        max_tokens: expected.len(),
        ignore_eos: true,
        ..Default::default()
    };
    let stops = session.stop_ids().to_vec();
    let g = generate::generate(
        session.model_mut(),
        &segs,
        &params,
        &stops,
        &|| false,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(g.tokens, expected, "{name} {prefix}greedy");
}

#[test]
fn logits_with_the_image_spliced_in_match() {
    for (name, _) in FAMILIES {
        check_logits_and_greedy(name, "", 1);
    }
}

#[test]
fn two_images_in_a_two_turn_conversation_match() {
    check_logits_and_greedy("mobilevlm_v2", "multi.", 2);
    check_logits_and_greedy("mobilevlm_v1", "multi.", 2);
}

#[test]
fn imp_196_runs_its_retrained_tower_at_196_tokens() {
    // The resolution reduction is the checkpoint's own tower (retrained at 196 px), read
    // from its config: no user-facing knob changes the image token count.
    let session = load("imp_196");
    let vision = session.spec().vision.as_ref().unwrap();
    assert_eq!(vision.tower.image_size, 28);
    assert_eq!(vision.processor.size, 28);
    assert_eq!(session.model().image_tokens(), Some(196));
}
