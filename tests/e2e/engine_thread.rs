//! The engine thread: commands in, events out, cancellation, errors that leave it usable.

use std::cell::Cell;
use std::time::Duration;

use crossbeam_channel::Receiver;
use pocketvlm_engine::{
    Command, Engine, Error, Event, GenerateRequest, LoadOptions, Message, SamplingParams, Session,
    StopReason,
};
use pocketvlm_tests::{Reference, fixture};

fn next(events: &Receiver<Event>) -> Event {
    events
        .recv_timeout(Duration::from_secs(60))
        .expect("engine event within 60 s")
}

fn load(engine: &mut Engine, name: &str) {
    engine
        .send(Command::Load {
            path: fixture(name),
            options: LoadOptions::default(),
        })
        .unwrap();
    loop {
        match next(engine.events()) {
            Event::Loaded(info) => {
                assert_eq!(info.family, "llama");
                return;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}

/// The engine answers a two-token request.
fn assert_generates_two_tokens(engine: &mut Engine) {
    engine.send(Command::Generate(request(2))).unwrap();
    loop {
        match next(engine.events()) {
            Event::Finished { metrics, .. } => {
                assert_eq!(metrics.generated_tokens, 2);
                return;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}

fn request(max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message::user("What is the capital of France?")],
        params: SamplingParams {
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        },
        raw: false,
    }
}

#[test]
fn streams_the_reference_continuation() {
    let reference = Reference::open(&fixture("llama_mha"));
    let expected = reference.ids("generated_ids");
    let mut engine = Engine::spawn();
    load(&mut engine, "llama_mha");
    engine
        .send(Command::Generate(request(expected.len())))
        .unwrap();
    let mut ids = Vec::new();
    let mut streamed = String::new();
    loop {
        match next(engine.events()) {
            Event::Token { id, text } => {
                if id != u32::MAX {
                    ids.push(id);
                }
                streamed.push_str(&text);
            }
            Event::Finished {
                text,
                stop,
                metrics,
            } => {
                assert_eq!(stop, StopReason::MaxTokens);
                assert_eq!(text, streamed);
                assert_eq!(metrics.generated_tokens, expected.len());
                assert_eq!(metrics.prompt_tokens, reference.ids("input_ids").len());
                assert!(metrics.ttft_ms > 0.0 && metrics.total_ms >= metrics.ttft_ms);
                break;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert_eq!(ids, expected);
}

#[test]
fn cancel_stops_queued_and_running_generations() {
    let mut engine = Engine::spawn();
    load(&mut engine, "llama_mha");
    engine.send(Command::Generate(request(150))).unwrap();
    engine.cancel();
    loop {
        match next(engine.events()) {
            Event::Finished { stop, metrics, .. } => {
                assert_eq!(stop, StopReason::Cancelled);
                assert!(metrics.generated_tokens < 150);
                break;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    // A later request is not affected by the earlier cancel.
    engine.send(Command::Generate(request(3))).unwrap();
    loop {
        if let Event::Finished { stop, .. } = next(engine.events()) {
            assert_eq!(stop, StopReason::MaxTokens);
            break;
        }
    }
}

#[test]
fn cancel_takes_effect_within_one_decode_step() {
    let mut session = Session::load(&fixture("llama_gqa"), &LoadOptions::default()).unwrap();
    let reference = Reference::open(&fixture("llama_gqa"));
    let seen = Cell::new(0);
    let params = SamplingParams {
        max_tokens: 100,
        ignore_eos: true,
        ..Default::default()
    };
    // The user presses stop while the third token is being produced.
    let g = session
        .generate(
            &reference.ids("input_ids"),
            &params,
            &|| seen.get() >= 3,
            &mut |_| {
                seen.set(seen.get() + 1);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::Cancelled);
    assert_eq!(g.tokens.len(), 3);
}

#[test]
fn errors_leave_the_engine_usable() {
    let mut engine = Engine::spawn();
    engine.send(Command::Generate(request(2))).unwrap();
    assert!(matches!(
        next(engine.events()),
        Event::Error(Error::NoModel)
    ));

    engine
        .send(Command::Load {
            path: fixture("does_not_exist"),
            options: LoadOptions::default(),
        })
        .unwrap();
    loop {
        match next(engine.events()) {
            Event::Error(Error::Io { .. }) => break,
            Event::Loading { .. } | Event::LoadProgress { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    load(&mut engine, "llama_gqa");
    assert_generates_two_tokens(&mut engine);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let mut engine = Engine::spawn();
    engine
        .send(Command::Load {
            path: fixture("llama_mha"),
            options: LoadOptions {
                context_len: Some(32),
                ..Default::default()
            },
        })
        .unwrap();
    loop {
        match next(engine.events()) {
            Event::Loaded(info) => {
                assert_eq!(info.context_len, 32);
                break;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    engine.send(Command::Generate(request(4))).unwrap();
    loop {
        match next(engine.events()) {
            Event::Error(Error::ContextOverflow { prompt, context }) => {
                assert_eq!(context, 32);
                assert!(prompt > 32);
                break;
            }
            Event::Started { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_model_too_big_for_memory_is_refused_with_advice() {
    let mut engine = Engine::spawn();
    // The fixture needs a few hundred KiB: a 64 KiB limit must be refused before any
    // weights are built, with a suggestion, and the engine must load the same model fine
    // once the limit is lifted.
    engine
        .send(Command::Load {
            path: fixture("llama_mha"),
            options: LoadOptions {
                memory_limit: Some(64 << 10),
                ..Default::default()
            },
        })
        .unwrap();
    loop {
        match next(engine.events()) {
            Event::Error(e @ Error::OutOfMemory { .. }) => {
                let Error::OutOfMemory {
                    needed, available, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(*available, 64 << 10);
                assert!(*needed > *available);
                let msg = e.to_string();
                assert!(
                    msg.contains("64.00 KiB is available") && msg.contains("--quant q4_0"),
                    "{msg}"
                );
                break;
            }
            Event::Loading { .. } | Event::LoadProgress { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    load(&mut engine, "llama_mha");
    assert_generates_two_tokens(&mut engine);
}
