//! The engine additions the app relies on: load progress events, and turn metrics with
//! the image stages and memory figures.

use pocketvlm_engine::session::load_stage;
use pocketvlm_engine::{
    Command, Engine, Event, GenerateRequest, LoadOptions, Message, SamplingParams,
};
use pocketvlm_tests::fixture;

fn load(engine: &mut Engine, name: &str) -> Vec<(String, f32)> {
    engine
        .send(Command::Load {
            path: fixture(name),
            options: LoadOptions::default(),
        })
        .unwrap();
    let mut progress = Vec::new();
    loop {
        match engine.events().recv().unwrap() {
            Event::LoadProgress { stage, fraction } => progress.push((stage, fraction)),
            Event::Loaded(_) => return progress,
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}

#[test]
fn loading_reports_named_stages_with_a_rising_fraction() {
    let mut engine = Engine::spawn();
    let progress = load(&mut engine, "mobilevlm_v2");
    assert_eq!(progress.first().unwrap().0, load_stage::READING_CONFIG);
    assert_eq!(
        progress.last().unwrap(),
        &(load_stage::READY.to_string(), 1.0)
    );
    assert!(
        progress
            .iter()
            .any(|(s, _)| s == load_stage::LOADING_TOKENIZER)
    );
    assert!(
        progress
            .iter()
            .filter(|(s, _)| s == load_stage::LOADING_WEIGHTS)
            .count()
            > 3,
        "{progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0].1 <= w[1].1),
        "{progress:?}"
    );
}

#[test]
fn turn_metrics_time_the_image_stages_and_report_memory() {
    let mut engine = Engine::spawn();
    load(&mut engine, "imp_qwen");
    engine
        .send(Command::Generate(GenerateRequest {
            messages: vec![
                Message::user("What is this?").with_image(fixture("images/shapes_square.png")),
            ],
            params: SamplingParams {
                max_tokens: 4,
                ..Default::default()
            },
            raw: false,
        }))
        .unwrap();
    let metrics = loop {
        match engine.events().recv().unwrap() {
            Event::Finished { metrics, .. } => break metrics,
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    };
    assert_eq!(metrics.images, 1);
    assert!(metrics.image_preprocess_ms > 0.0);
    assert!(metrics.vision_encode_ms > 0.0);
    assert!(metrics.projector_ms > 0.0);
    // The image was attached with the message: all its work ran inside the turn, before the
    // first token. The prefill overlaps the encoding (text before the image is prefilled
    // while the tower runs, and the chunk with the image's rows waits for them), so the
    // stages no longer add up; each bounds the time to first token.
    assert!(metrics.ttft_ms >= metrics.image_ms(), "{metrics:?}");
    assert!(metrics.ttft_ms >= metrics.prefill_ms, "{metrics:?}");
    let encodes: Vec<_> = metrics
        .timeline
        .iter()
        .filter(|s| s.stage == pocketvlm_engine::metrics::Stage::VisionEncode)
        .collect();
    assert!(
        encodes.len() == 1 && encodes[0].start_ms >= 0.0,
        "{:?}",
        metrics.timeline
    );
    assert!(metrics.weight_bytes > 0);
    assert!(metrics.kv_cache_bytes > 0);
    if cfg!(target_os = "linux") {
        assert!(metrics.process_memory_bytes.is_some_and(|b| b > 0));
    }
}

#[test]
fn a_text_turn_has_no_image_time() {
    let mut engine = Engine::spawn();
    load(&mut engine, "llama_gqa");
    engine
        .send(Command::Generate(GenerateRequest {
            messages: vec![Message::user("hello")],
            params: SamplingParams {
                max_tokens: 3,
                ..Default::default()
            },
            raw: false,
        }))
        .unwrap();
    loop {
        match engine.events().recv().unwrap() {
            Event::Finished { metrics, .. } => {
                assert_eq!(metrics.images, 0);
                assert_eq!(metrics.image_ms(), 0.0);
                break;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert!(engine.is_running());
}
