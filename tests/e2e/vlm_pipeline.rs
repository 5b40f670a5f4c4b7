//! The vision-language families end to end from image files and chat messages: our
//! preprocessing against the reference processors, our prompt templates and tokenisation
//! against the reference token ids, and generation from files.

use pocketvlm_engine::model::spec::ImagePlaceholder;
use pocketvlm_engine::{LoadOptions, Message, PromptPart, SamplingParams, Session};
use pocketvlm_tests::{Reference, fixture};

const FAMILIES: [&str; 6] = [
    "mobilevlm_v1",
    "mobilevlm_v2",
    "imp_v1",
    "imp_qwen",
    "imp_phi3",
    "imp_196",
];
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

/// The id a family's reference prompt uses for an image: the -200 sentinel (MobileVLM) or
/// the checkpoint's `<image>` vocabulary id (Imp).
fn placeholder(session: &Session) -> i64 {
    match session.spec().vision.as_ref().unwrap().placeholder {
        ImagePlaceholder::Sentinel => -200,
        ImagePlaceholder::VocabId(id) => i64::from(id),
    }
}

#[test]
fn preprocessing_matches_the_reference_processor() {
    for name in FAMILIES {
        let reference = Reference::open(&fixture(name));
        let session = load(name);
        let std = session.spec().vision.as_ref().unwrap().processor.std;
        for (i, name_i) in IMAGES.iter().enumerate() {
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
            eprintln!(
                "{name} {}: max pixel difference {:.2}/255",
                name_i,
                worst * 255.0
            );
            // PNG and JPEG decode exactly as PIL, and preprocessing follows the processor to
            // the bit: only float rounding in the comparison remains.
            assert!(worst <= 1e-6, "{name} {}: {}/255", name_i, worst * 255.0);
        }
    }
}

#[test]
fn prompts_match_the_reference_tokenisation() {
    for name in FAMILIES {
        let reference = Reference::open(&fixture(name));
        let session = load(name);
        let messages = [Message::user(QUESTION).with_image(image(0))];
        let prompt = session.prompt(&messages, false).unwrap();
        assert_eq!(prompt.images, vec![image(0)]);
        let got = flatten(&prompt.parts, placeholder(&session));
        assert_eq!(got, reference.i64("input_ids"), "{name}");
        let (text, _) = session.prompt_text(&messages, false).unwrap();
        assert_eq!(text, reference.meta()["prompt"].as_str().unwrap(), "{name}");
    }
    // Two turns with an image in each (MobileVLM's multi-turn reference).
    for name in ["mobilevlm_v1", "mobilevlm_v2"] {
        let reference = Reference::open(&fixture(name));
        let session = load(name);
        let messages = [
            Message::user(QUESTION).with_image(image(0)),
            Message::assistant("Shapes."),
            Message::user("And this one?").with_image(image(1)),
        ];
        let prompt = session.prompt(&messages, false).unwrap();
        assert_eq!(prompt.images, vec![image(0), image(1)]);
        assert_eq!(
            flatten(&prompt.parts, -200),
            reference.i64("multi.input_ids"),
            "{name}"
        );
    }
}

#[test]
fn greedy_answers_from_image_files_match() {
    for name in FAMILIES {
        let reference = Reference::open(&fixture(name));
        let expected = reference.ids("generated_ids");
        let mut session = load(name);
        let prompt = session
            .prompt(&[Message::user(QUESTION).with_image(image(0))], false)
            .unwrap();
        let params = SamplingParams {
            max_tokens: expected.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let mut ids = vec![];
        let (generation, text) = session
            .chat(&prompt, &params, &|| false, &mut |id, _| {
                if id != u32::MAX {
                    ids.push(id)
                }
            })
            .unwrap();
        assert_eq!(generation.tokens, expected, "{name}");
        assert_eq!(ids, expected, "{name}");
        assert_eq!(
            text,
            session.tokenizer().decode(&expected, true).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn images_are_refused_by_text_models_and_counted() {
    let session = load("imp_qwen");
    let mut m = Message::user(QUESTION);
    m.images = vec![image(0), image(1)];
    let prompt = session.prompt(&[m], false).unwrap();
    assert_eq!(
        prompt
            .parts
            .iter()
            .filter(|p| matches!(p, PromptPart::Image(_)))
            .count(),
        2
    );

    let text = Session::load(&fixture("llama_gqa"), &LoadOptions::default()).unwrap();
    let err = text
        .prompt(&[Message::user("hi").with_image(image(0))], false)
        .unwrap_err();
    assert!(err.to_string().contains("cannot take images"), "{err}");
}

#[test]
fn a_broken_image_is_a_clear_error_and_the_session_survives() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    let mut session = load("mobilevlm_v2");
    let prompt = session
        .prompt(&[Message::user(QUESTION).with_image(&bad)], false)
        .unwrap();
    let params = SamplingParams {
        max_tokens: 2,
        ..Default::default()
    };
    let err = session
        .chat(&prompt, &params, &|| false, &mut |_, _| {})
        .unwrap_err();
    assert!(err.to_string().contains("notes.png"), "{err}");
    // The model still answers with a good image afterwards.
    let prompt = session
        .prompt(&[Message::user(QUESTION).with_image(image(0))], false)
        .unwrap();
    assert!(
        session
            .chat(&prompt, &params, &|| false, &mut |_, _| {})
            .is_ok()
    );
}
