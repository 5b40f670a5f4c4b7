//! Quantised weights: quantise-on-load keeps the tiny fixtures' answers (top-1 agreement
//! with the f32 model over every position).

use pocketvlm_engine::generate::sampler::argmax;
use pocketvlm_engine::tensor::DType;
use pocketvlm_engine::{LoadOptions, Session};
use pocketvlm_tests::{Reference, fixture};

fn logits(name: &str, quant: Option<DType>) -> (Vec<f32>, usize) {
    let opts = LoadOptions {
        quant,
        ..Default::default()
    };
    let mut s = Session::load(&fixture(name), &opts).unwrap();
    let r = Reference::open(&fixture(name));
    let mut ids = r.ids("input_ids");
    ids.extend(r.ids("generated_ids"));
    let vocab = s.info().vocab_size;
    (s.logits(&ids).unwrap(), vocab)
}

pub fn agreement(a: &[f32], b: &[f32], vocab: usize) -> f64 {
    let same = a
        .chunks(vocab)
        .zip(b.chunks(vocab))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    same as f64 / (a.len() / vocab) as f64
}

fn eval_logits(quant: Option<DType>) -> (Vec<f32>, usize) {
    let opts = LoadOptions {
        quant,
        ..Default::default()
    };
    let dir = fixture("llama_trained");
    let mut s = Session::load(&dir, &opts).unwrap();
    let file =
        pocketvlm_engine::load::safetensors::SafetensorsFile::open(&dir.join("eval.safetensors"))
            .unwrap();
    let (_, bytes) = file.raw("eval_ids").unwrap();
    let ids: Vec<u32> = bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let vocab = s.info().vocab_size;
    (s.logits(&ids).unwrap(), vocab)
}

/// The error budget on a (tiny) trained model: random weights give near-uniform logits
/// whose top-1 any rounding flips, so the budget is measured where predictions mean
/// something: held-out text like the model's training data.
#[test]
fn quantised_trained_model_stays_within_the_error_budget() {
    let name = "llama_trained";
    let (f32_logits, vocab) = eval_logits(Some(DType::F32));
    let mut failures = vec![];
    for (quant, floor) in [
        (DType::Q8_0, 0.99),
        (DType::Q4_0, 0.90),
        (DType::Q4_1, 0.90),
    ] {
        let (q, _) = eval_logits(Some(quant));
        let rate = agreement(&f32_logits, &q, vocab);
        eprintln!(
            "{name} {quant}: top-1 agreement with f32 {:.1}%",
            rate * 100.0
        );
        if rate < floor {
            failures.push(format!("{quant}: {rate:.3} < {floor}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// On random weights the budget means little, but a quantised model must still be close.
#[test]
fn quantised_random_models_stay_close() {
    for name in ["llama_mha", "llama_gqa", "llama_scaled"] {
        let (f32_logits, vocab) = logits(name, Some(DType::F32));
        for quant in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let (q, _) = logits(name, Some(quant));
            let rate = agreement(&f32_logits, &q, vocab);
            let (d, s) = pocketvlm_tests::max_abs_diff(&q, &f32_logits);
            eprintln!(
                "{name} {quant}: top-1 agreement {:.1}%, max|Δ| {d:.3} of {s:.2}",
                rate * 100.0
            );
            // Sanity, not a budget: a wrong block layout would leave chance agreement (0.1%).
            if quant == DType::Q8_0 {
                assert!(d <= 0.05 * s, "{name} {quant}: {d}");
            } else {
                assert!(rate >= 0.3, "{name} {quant}: {rate}");
            }
        }
    }
}
