//! Latency hiding, on the bluelm-v fixture (a tiled image of 588 positions): encode while
//! the user types (`Session::prepare_image`), prefix reuse across turns, chunked prefill
//! with Cancel between chunks, and the turn timeline. Every answer is checked against the
//! reference (or a session without the optimisation), so a shortcut that changed the
//! numbers fails.

use pocketvlm_engine::generate::Generation;
use pocketvlm_engine::metrics::Stage;
use pocketvlm_engine::{Message, Prompt, PromptPart, SamplingParams, Session, StopReason};
use pocketvlm_tests::{Reference, fixture};

use crate::bluelm::{NAME, QUESTION, image, load};

/// Positions of the wide photo: 3 passes × 196.
const IMAGE_ROWS: usize = 588;

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

fn chat(session: &mut Session, messages: &[Message], n: usize) -> (Generation, String) {
    let prompt = session.prompt(messages, false).unwrap();
    session
        .chat(&prompt, &greedy(n), &|| false, &mut |_, _| {})
        .unwrap()
}

/// A prompt's positions, images as `u32::MAX - image index` runs of [`IMAGE_ROWS`].
fn positions(prompt: &Prompt) -> Vec<u32> {
    let mut out = vec![];
    for p in &prompt.parts {
        match p {
            PromptPart::Tokens(t) => out.extend(t),
            PromptPart::Image(i) => {
                out.extend(std::iter::repeat_n(u32::MAX - *i as u32, IMAGE_ROWS))
            }
        }
    }
    out
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn an_image_prepared_while_typing_is_not_encoded_again() {
    let expected = Reference::open(&fixture(NAME)).ids("generated_ids");
    let mut session = load();
    let prepared = session.prepare_image(&image(1)).unwrap();
    assert_eq!((prepared.tokens, prepared.passes), (IMAGE_ROWS, 3));
    assert!(!prepared.cached);
    session.wait_image(&prepared.hash).unwrap();
    // The same bytes again: nothing runs.
    assert!(session.prepare_image(&image(1)).unwrap().cached);

    let (g, _) = chat(
        &mut session,
        &[Message::user(QUESTION).with_image(image(1))],
        expected.len(),
    );
    assert_eq!(g.tokens, expected);
    // The encoding ran before the request: its spans end at or before 0 ms, and the first
    // token waited only for the prefill.
    let timeline = &g.metrics.timeline;
    let encodes: Vec<_> = timeline
        .iter()
        .filter(|s| matches!(s.stage, Stage::VisionEncode | Stage::Projector))
        .collect();
    assert_eq!(encodes.len(), 4, "{timeline:?}");
    assert!(encodes.iter().all(|s| s.end_ms <= 0.0), "{timeline:?}");
    let first_prefill = timeline.iter().find(|s| s.stage == Stage::Prefill).unwrap();
    assert!(first_prefill.start_ms >= 0.0);
    assert!(g.metrics.vision_encode_ms > 0.0);
}

#[test]
fn a_follow_up_prefills_only_the_new_tokens_and_an_edit_only_what_changed() {
    let mut session = load();
    let first = [Message::user(QUESTION).with_image(image(1))];
    let (g1, answer) = chat(&mut session, &first, 8);
    let p1 = positions(&session.prompt(&first, false).unwrap());
    assert_eq!(g1.metrics.reused_tokens, 0);
    assert_eq!(g1.metrics.prefill_tokens, p1.len());

    // Follow-up: everything up to the answer is in the KV cache.
    let follow = [
        first[0].clone(),
        Message::assistant(&answer),
        Message::user("And the colours?"),
    ];
    let (g2, _) = chat(&mut session, &follow, 8);
    let p2 = positions(&session.prompt(&follow, false).unwrap());
    let m = &g2.metrics;
    assert!(
        m.reused_tokens >= common_prefix(&p1, &p2) && m.reused_tokens > IMAGE_ROWS,
        "reused {} of {}",
        m.reused_tokens,
        p2.len()
    );
    assert_eq!(m.prefill_tokens, p2.len() - m.reused_tokens);

    // The same turn without reuse gives the same answer.
    let mut fresh = load();
    fresh.set_prefix_reuse(false);
    let (g2_fresh, _) = chat(&mut fresh, &follow, 8);
    assert_eq!(g2_fresh.metrics.reused_tokens, 0);
    assert_eq!(g2.tokens, g2_fresh.tokens);

    // Editing the first question (after the image) keeps exactly the positions before it.
    let edited = [Message::user("What colour is the sky?").with_image(image(1))];
    let p3 = positions(&session.prompt(&edited, false).unwrap());
    let kept = common_prefix(&p2, &p3);
    let (g3, _) = chat(&mut session, &edited, 8);
    assert_eq!(g3.metrics.reused_tokens, kept);
    assert!(kept >= IMAGE_ROWS, "the image stays in the cache: {kept}");
    let (g3_fresh, _) = chat(&mut fresh, &edited, 8);
    assert_eq!(g3.tokens, g3_fresh.tokens);

    // Another image: only the positions before it are kept.
    let other = [Message::user(QUESTION).with_image(image(0))];
    let p4 = positions(&session.prompt(&other, false).unwrap());
    let (g4, _) = chat(&mut session, &other, 4);
    let before_image = p4.iter().position(|&p| p >= u32::MAX - 8).unwrap();
    assert_eq!(
        g4.metrics.reused_tokens,
        before_image.min(common_prefix(&p3, &p4))
    );
    let (g4_fresh, _) = chat(&mut fresh, &other, 4);
    assert_eq!(g4.tokens, g4_fresh.tokens);
}

#[test]
fn prefill_runs_in_chunks_and_cancel_stops_within_one() {
    let expected = Reference::open(&fixture(NAME)).ids("generated_ids");
    let messages = [Message::user(QUESTION).with_image(image(1))];
    let mut session = load();
    session.set_prefix_reuse(false);
    session.set_prefill_chunk(64);

    let (g, _) = chat(&mut session, &messages, expected.len());
    assert_eq!(g.tokens, expected);
    let n = g.metrics.prompt_tokens;
    let chunks: Vec<_> = g
        .metrics
        .timeline
        .iter()
        .filter(|s| s.stage == Stage::Prefill)
        .collect();
    assert_eq!(chunks.len(), n.div_ceil(64));
    assert!(chunks.iter().all(|s| s.tokens <= 64));
    assert_eq!(chunks.iter().map(|s| s.tokens).sum::<usize>(), n);

    // Cancel after the second chunk has started: exactly two chunks ran.
    let mut session = load();
    session.set_prefill_chunk(64);
    let calls = std::cell::Cell::new(0);
    let prompt = session.prompt(&messages, false).unwrap();
    let (g, _) = session
        .chat(
            &prompt,
            &greedy(4),
            &|| {
                calls.set(calls.get() + 1);
                calls.get() > 2
            },
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::Cancelled);
    assert_eq!(g.metrics.prefill_tokens, 128);
    assert!(g.tokens.is_empty());

    // The next turn keeps the two chunks and prefills the rest.
    let (g, _) = chat(&mut session, &messages, expected.len());
    assert_eq!(g.tokens, expected);
    assert_eq!(g.metrics.reused_tokens, 128);
}

#[test]
fn the_engine_prepares_an_attached_image_before_the_message_is_sent() {
    use pocketvlm_engine::{Command, Engine, Event, GenerateRequest, LoadOptions};
    let expected = Reference::open(&fixture(NAME)).ids("generated_ids");
    let mut engine = Engine::spawn();
    let next = |engine: &Engine| {
        engine
            .events()
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("an engine event")
    };
    // No model yet: a failure event, never an error.
    engine
        .send(Command::PrepareImage { path: image(1) })
        .unwrap();
    loop {
        match next(&engine) {
            Event::ImagePrepareFailed { path, .. } => {
                assert_eq!(path, image(1));
                break;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    engine
        .send(Command::Load {
            path: fixture(NAME),
            options: LoadOptions::default(),
        })
        .unwrap();
    engine
        .send(Command::PrepareImage { path: image(1) })
        .unwrap();
    engine
        .send(Command::Generate(GenerateRequest {
            messages: vec![Message::user(QUESTION).with_image(image(1))],
            params: greedy(expected.len()),
            raw: false,
        }))
        .unwrap();
    let mut prepared = false;
    loop {
        match next(&engine) {
            Event::ImagePrepared { image: p, .. } => {
                assert_eq!((p.tokens, p.passes, p.cached), (IMAGE_ROWS, 3, false));
                prepared = true;
            }
            Event::Finished { metrics, .. } => {
                assert!(prepared);
                assert_eq!(metrics.generated_tokens, expected.len());
                let t = &metrics.timeline;
                assert_eq!(t.first().map(|s| s.stage), Some(Stage::ImagePreprocess));
                assert!(t[0].end_ms <= 0.0, "preprocessed before the request: {t:?}");
                assert!(t.iter().any(|s| s.stage == Stage::Tokenize));
                assert!(t.iter().any(|s| s.stage == Stage::Decode));
                break;
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
}

/// Pipelining, observed on the inline runner (what the GPU uses; the CPU's vision thread
/// gives the same order without blocking): a prefill chunk that holds only the first tiles'
/// rows runs with just their batch encoded, and the later tiles are encoded when a chunk
/// first needs them — with the same logits as encoding everything first.
#[test]
fn prefill_of_the_first_tiles_runs_before_later_tiles_are_encoded() {
    use pocketvlm_engine::backend::cpu::CpuBackend;
    use pocketvlm_engine::load::safetensors::Checkpoint;
    use pocketvlm_engine::load::spec::read_model_spec;
    use pocketvlm_engine::model::vlm::{QuantPolicy, Vlm};
    use pocketvlm_engine::model::{Logits, Model, Segment};

    let dir = fixture(NAME);
    let reference = Reference::open(&dir);
    let spec = read_model_spec(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let mut vlm = Vlm::load(
        CpuBackend::new(Some(2)).unwrap(),
        &spec,
        &ckpt,
        QuantPolicy::default(),
        2048,
    )
    .unwrap();
    let (shape, pixels) = reference.f32("pixel_values.1");
    let passes: Vec<Vec<f32>> = pixels
        .chunks(pixels.len() / shape[0])
        .map(<[f32]>::to_vec)
        .collect();
    let id = vlm.begin_image(passes.clone()).unwrap();
    let text = [1u32, 2, 3];
    // Chunk 1: text and the first 100 rows (pass 1, in the first batch of two passes).
    let first = [Segment::Tokens(&text), Segment::Image { id, rows: 0..100 }];
    vlm.forward(&first, 0, Logits::Last).unwrap();
    let (times, ready) = vlm.image_times(id).unwrap();
    assert!(!ready, "the third pass waits for a chunk that needs it");
    assert!(times.vision_ms > 0.0);
    // Chunk 2: the rest of the image (the second batch is encoded now).
    let rest = [Segment::Image {
        id,
        rows: 100..IMAGE_ROWS,
    }];
    let piecewise = vlm.forward(&rest, text.len() + 100, Logits::Last).unwrap();
    assert!(vlm.image_times(id).unwrap().1);

    // The same prompt with the image encoded up front, in one call.
    let whole = vlm.begin_image(passes).unwrap();
    vlm.wait_image(whole).unwrap();
    let all = [
        Segment::Tokens(&text),
        Segment::Image {
            id: whole,
            rows: 0..IMAGE_ROWS,
        },
    ];
    let at_once = vlm.forward(&all, 0, Logits::Last).unwrap();
    let (diff, scale) = pocketvlm_tests::max_abs_diff(&piecewise, &at_once);
    assert!(diff <= 1e-5 * scale, "{diff} vs {scale}");
}
