//! The bundled demo model (`assets/demo`, trained by `assets/demo/train.py`) on its held-out
//! evaluation set (`tests/fixtures/demo_eval`, drawn with another seed): loaded like any
//! MobileVLM V2 checkpoint, asked each question greedily, answers compared exactly.
//!
//! Issue 7 asks for ≥ 90% exact answers on colour, shape, count and position questions;
//! the committed model measured 90.7% (107 of 118; see `assets/demo/README.md`), the same
//! on every CPU kernel flavour and activation format, so the accuracy test holds the engine
//! to the target itself. The form test checks that the checkpoint loads and answers in its
//! trained sentences.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pocketvlm_engine::{LoadOptions, Message, SamplingParams, Session};
use pocketvlm_tests::fixture;

/// Exact-match accuracy the demo must keep on colour, shape, count and position questions
/// (the target; measured: 90.7%).
const MIN_ACCURACY: f64 = 0.90;

/// `assets/<name>` at the repository root.
fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("assets")
        .join(name)
}

fn load_demo() -> Session {
    Session::load(&asset("demo"), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("the demo model does not load: {e}"))
}

/// The greedy answer to one question about one image, without the leading space.
fn answer(session: &mut Session, image: &Path, question: &str) -> String {
    let prompt = session
        .prompt(&[Message::user(question).with_image(image)], false)
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    let params = SamplingParams {
        max_tokens: 96,
        ..Default::default()
    };
    let (_, text) = session
        .chat(&prompt, &params, &|| false, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    text.trim().to_string()
}

/// A description is sensible when it names every shape as "<colour> <kind>" and the word.
fn sensible_description(item: &serde_json::Value, text: &str) -> bool {
    let shapes = item["shapes"].as_array().cloned().unwrap_or_default();
    let named = shapes.iter().all(|s| {
        let colour = s[0].as_str().unwrap_or_default();
        let kind = s[1].as_str().unwrap_or_default();
        text.contains(&format!("{colour} {kind}"))
    });
    let word = item["word"]
        .as_str()
        .is_none_or(|w| text.contains(&format!("\"{w}\"")));
    named && word
}

#[test]
fn demo_model_answers_the_held_out_set() {
    let dir = fixture("demo_eval");
    let items: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("items.json")).expect("reading items.json"),
    )
    .expect("parsing items.json");
    let mut session = load_demo();
    // type → (exact matches, sensible descriptions, total)
    let mut tally: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for item in items["items"].as_array().expect("an items list") {
        let ty = item["type"].as_str().unwrap_or_default().to_string();
        let image = dir.join(item["image"].as_str().unwrap_or_default());
        let expected = item["answer"].as_str().unwrap_or_default();
        let got = answer(
            &mut session,
            &image,
            item["question"].as_str().unwrap_or_default(),
        );
        let t = tally.entry(ty.clone()).or_default();
        t.2 += 1;
        if got == expected {
            t.0 += 1;
        } else {
            eprintln!(
                "miss [{ty}] {}: {:?} → {got:?} (expected {expected:?})",
                item["image"], item["question"]
            );
        }
        if ty == "describe" && sensible_description(item, &got) {
            t.1 += 1;
        }
    }
    let mut core = (0, 0);
    for (ty, (hit, sensible, total)) in &tally {
        eprintln!(
            "{ty:>9}: {hit}/{total} exact ({:.0}%)",
            100.0 * *hit as f64 / *total as f64
        );
        if ty == "describe" {
            eprintln!("{:>9}  {sensible}/{total} name every shape and word", "");
        }
        if ["colour", "shape", "count", "position"].contains(&ty.as_str()) {
            core.0 += hit;
            core.1 += total;
        }
    }
    let accuracy = core.0 as f64 / core.1 as f64;
    eprintln!("colour/shape/count/position: {:.1}%", 100.0 * accuracy);
    assert!(
        accuracy >= MIN_ACCURACY,
        "exact match {accuracy:.3} < {MIN_ACCURACY}"
    );
    let (_, sensible, total) = tally.get("describe").copied().unwrap_or_default();
    assert!(total > 0, "the evaluation set has descriptions");
    eprintln!("sensible descriptions: {sensible}/{total}");
}

/// The checkpoint loads through the normal MobileVLM V2 path and answers each kind of
/// question in the sentence form it was trained on (right or wrong).
#[test]
fn demo_model_answers_in_its_trained_sentence_forms() {
    const COLOURS: [&str; 10] = [
        "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
    ];
    let mut session = load_demo();
    let image = asset("samples").join("shapes.png");
    let colour = answer(&mut session, &image, "What colour is the star?");
    assert!(
        colour
            .strip_prefix("The star is ")
            .and_then(|c| c.strip_suffix('.'))
            .is_some_and(|c| COLOURS.contains(&c)),
        "{colour:?}"
    );
    let count = answer(&mut session, &image, "How many shapes are there?");
    assert!(
        count.starts_with("There ") && count.ends_with('.'),
        "{count:?}"
    );
    let exists = answer(&mut session, &image, "Is there a red star?");
    assert!(exists == "Yes." || exists == "No.", "{exists:?}");
}
