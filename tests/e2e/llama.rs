//! LLaMA-family fixtures: logits and greedy continuations must match transformers.

use pocketvlm_engine::backend::cpu::KvPrecision;
use pocketvlm_engine::{LoadOptions, SamplingParams, Session};
use pocketvlm_tests::{Reference, exact, fixture, max_abs_diff};

const FIXTURES: [&str; 3] = ["llama_mha", "llama_gqa", "llama_scaled"];

fn load(name: &str) -> Session {
    Session::load(&fixture(name), &exact()).unwrap_or_else(|e| panic!("{e}"))
}

/// The session's logits for the fixture's prompt are within `tol × max|ref|` of
/// transformers'.
fn assert_logits_close(name: &str, session: &mut Session, tol: f32) {
    let reference = Reference::open(&fixture(name));
    let ids = reference.ids("input_ids");
    let (shape, expected) = reference.f32("logits");
    let got = session.logits(&ids).unwrap();
    assert_eq!(got.len(), shape[0] * shape[1], "{name}");
    let (diff, scale) = max_abs_diff(&got, &expected);
    eprintln!("{name}: max|Δ| = {diff:.3e}, max|ref| = {scale:.3}");
    assert!(
        diff <= tol * scale,
        "{name}: max|Δ| {diff} > {tol:e} × {scale}"
    );
}

/// The session's greedy continuation of the fixture's prompt is transformers'.
fn assert_greedy_matches(name: &str, session: &mut Session) {
    let reference = Reference::open(&fixture(name));
    let expected = reference.ids("generated_ids");
    let params = SamplingParams {
        max_tokens: expected.len(),
        ignore_eos: true,
        ..Default::default()
    };
    let generation = session
        .generate(&reference.ids("input_ids"), &params, &|| false, &mut |_| {
            Ok(())
        })
        .unwrap();
    assert_eq!(generation.tokens, expected, "{name}");
}

/// The default f16 KV cache: logits within 1e-3 of transformers' (each cached value
/// rounded to 11 bits) and the same greedy continuations.
#[test]
fn an_f16_kv_cache_keeps_greedy_tokens() {
    for name in FIXTURES {
        let opts = LoadOptions {
            kv_cache: Some(KvPrecision::F16),
            ..LoadOptions::default()
        };
        let mut session = Session::load(&fixture(name), &opts).unwrap_or_else(|e| panic!("{e}"));
        assert_logits_close(name, &mut session, 1e-3);
        assert_greedy_matches(name, &mut session);
    }
}

#[test]
fn logits_match_transformers() {
    for name in FIXTURES {
        assert_logits_close(name, &mut load(name), 1e-4);
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        assert_greedy_matches(name, &mut load(name));
    }
}

#[test]
fn prompt_tokens_match_the_python_template() {
    for name in FIXTURES {
        let reference = Reference::open(&fixture(name));
        let session = load(name);
        let prompt = reference.meta()["prompt"].as_str().unwrap().to_string();
        let messages = [pocketvlm_engine::Message::user(
            "What is the capital of France?",
        )];
        let (text, templated) = session.prompt_text(&messages, false).unwrap();
        assert!(templated);
        assert_eq!(text, prompt, "{name}");
        let prompt = session.prompt(&messages, false).unwrap();
        assert_eq!(prompt.text_tokens(), reference.ids("input_ids"));
    }
}

#[test]
fn kv_cache_decode_matches_a_full_forward() {
    // Prefill part of the prompt, then feed the rest one token at a time: every decode
    // step's logits must match transformers' logits for that position.
    for name in FIXTURES {
        let reference = Reference::open(&fixture(name));
        let ids = reference.ids("input_ids");
        let (_, all) = reference.f32("logits");
        let vocab = all.len() / ids.len();
        let mut session = load(name);
        let split = ids.len() / 3;
        let mut last = session.forward_last(&ids[..split], 0).unwrap();
        for pos in split..ids.len() {
            let expected = &all[(pos - 1) * vocab..pos * vocab];
            let (d, s) = max_abs_diff(&last, expected);
            assert!(d <= 1e-4 * s, "{name} position {}: {d} vs {s}", pos - 1);
            last = session.forward_last(&ids[pos..pos + 1], pos).unwrap();
        }
    }
}
