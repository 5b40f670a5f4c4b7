//! The bad-input table, one test per row: every damaged or hostile input gets a typed
//! error, and the engine (or session) that saw it is still usable afterwards. Rows already
//! covered elsewhere: truncated safetensors, shape vs config, unknown architecture
//! (`bad_inputs.rs`); code-running and truncated pickles (`pytorch_bin.rs`); truncated,
//! damaged and oversized images, text named `.png` (`image.rs`); prompt over the context and
//! cancel during decode (`engine_thread.rs`).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::Receiver;
use pocketvlm_engine::error::ImageErrorKind;
use pocketvlm_engine::load::gguf::{GgmlType, GgufFile, Writer};
use pocketvlm_engine::load::safetensors::SafetensorsFile;
use pocketvlm_engine::{
    Command, Engine, Error, Event, GenerateRequest, LoadOptions, Message, SamplingParams, Session,
    StopReason,
};
use pocketvlm_tests::{Reference, fixture, scratch_copy};

fn next(events: &Receiver<Event>) -> Event {
    events
        .recv_timeout(Duration::from_secs(120))
        .expect("engine event within 120 s")
}

fn send_load(engine: &mut Engine, path: PathBuf) {
    engine
        .send(Command::Load {
            path,
            options: LoadOptions::default(),
        })
        .unwrap();
}

/// Waits for the end of a load: the model's family, or the error.
fn load_outcome(engine: &Engine) -> Result<String, Error> {
    loop {
        match next(engine.events()) {
            Event::Loaded(info) => return Ok(info.family),
            Event::Error(e) => return Err(e),
            Event::Loading { .. } | Event::LoadProgress { .. } => {}
            other => panic!("unexpected during a load: {other:?}"),
        }
    }
}

fn request(messages: Vec<Message>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        messages,
        params: SamplingParams {
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        },
        raw: false,
    }
}

/// Waits for the end of a generation: (stop reason, tokens), or the error.
fn generation_outcome(engine: &Engine) -> Result<(StopReason, usize), Error> {
    loop {
        match next(engine.events()) {
            Event::Finished { stop, metrics, .. } => return Ok((stop, metrics.generated_tokens)),
            Event::Error(e) => return Err(e),
            Event::Started { .. } | Event::Token { .. } => {}
            other => panic!("unexpected during a generation: {other:?}"),
        }
    }
}

/// The engine still answers: a two-token generation on whatever is loaded.
fn assert_still_generates(engine: &mut Engine) {
    let text = vec![Message::user("Still there?")];
    engine.send(Command::Generate(request(text, 2))).unwrap();
    assert_eq!(
        generation_outcome(engine).unwrap(),
        (StopReason::MaxTokens, 2)
    );
}

// ---------------------------------------------------------------- model files

/// A safetensors file's header as JSON, and the data after it.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

fn load_error(dir: &Path) -> Error {
    match Session::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

fn assert_bad_file(e: Error, needle: &str) {
    match &e {
        Error::BadModelFile { path, reason } => {
            assert!(path.ends_with("model.safetensors"), "{e}");
            assert!(reason.contains(needle), "expected `{needle}` in: {e}");
        }
        other => panic!("expected BadModelFile, got {other:?}"),
    }
}

#[test]
fn safetensors_header_size_that_lies() {
    let dir = scratch_copy("llama_mha");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for claimed in [u64::MAX, bytes.len() as u64, 1 << 40] {
        let mut lying = bytes.clone();
        lying[..8].copy_from_slice(&claimed.to_le_bytes());
        std::fs::write(&path, &lying).unwrap();
        assert_bad_file(load_error(dir.path()), "header");
    }
    // The original still loads: nothing was cached from the bad attempts.
    std::fs::write(&path, &bytes).unwrap();
    Session::load(dir.path(), &LoadOptions::default()).unwrap();
}

#[test]
fn safetensors_offsets_that_lie() {
    let dir = scratch_copy("llama_mha");
    let path = dir.path().join("model.safetensors");
    let (header, data) = split_safetensors(&std::fs::read(&path).unwrap());
    let name = "model.layers.0.mlp.down_proj.weight";
    let cases: [(&str, serde_json::Value); 3] = [
        // Past the end of the file.
        ("beyond", serde_json::json!([0, data.len() + 4096])),
        // Shorter than the shape needs.
        ("bytes", serde_json::json!([0, 8])),
        // End before start.
        ("offsets", serde_json::json!([64, 0])),
    ];
    for (needle, offsets) in cases {
        let mut h = header.clone();
        h[name]["data_offsets"] = offsets;
        std::fs::write(&path, join_safetensors(&h, &data)).unwrap();
        let e = load_error(dir.path());
        assert!(
            matches!(&e, Error::BadModelFile { reason, .. } if reason.contains(name)),
            "{needle}: {e:?}"
        );
    }
}

#[test]
fn safetensors_bit_flips_never_panic() {
    let bytes = std::fs::read(fixture("llama_mha").join("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (mut ok, mut refused) = (0, 0);
    // Every header byte, three different flips each; a flip in the header must be refused
    // or give a file whose tensors all read back within bounds.
    for i in 0..header_end {
        for mask in [0x01u8, 0x20, 0xFF] {
            let mut flipped = bytes.clone();
            flipped[i] ^= mask;
            std::fs::write(&path, &flipped).unwrap();
            match SafetensorsFile::open(&path) {
                Ok(f) => {
                    let names: Vec<String> = f.names().map(str::to_string).collect();
                    for n in names {
                        match f.tensor(&n) {
                            Ok(t) => assert!(t.bytes().len() <= flipped.len()),
                            Err(e) => assert!(
                                matches!(
                                    e,
                                    Error::UnsupportedDtype { .. } | Error::BadModelFile { .. }
                                ),
                                "byte {i}: {e:?}"
                            ),
                        }
                    }
                    ok += 1;
                }
                Err(Error::BadModelFile { .. }) => refused += 1,
                Err(e) => panic!("byte {i} ^ {mask:#x}: untyped {e:?}"),
            }
        }
    }
    assert!(refused > header_end, "only {refused} refused, {ok} opened");
    // A flip in the data is not detectable (safetensors has no checksum) but loads.
    let mut flipped = bytes.clone();
    flipped[header_end + 100] ^= 0xFF;
    let dir = scratch_copy("llama_mha");
    std::fs::write(dir.path().join("model.safetensors"), &flipped).unwrap();
    Session::load(dir.path(), &LoadOptions::default()).unwrap();
}

#[test]
fn unsupported_safetensors_dtype() {
    let dir = scratch_copy("llama_mha");
    let path = dir.path().join("model.safetensors");
    let (mut header, data) = split_safetensors(&std::fs::read(&path).unwrap());
    let name = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(header[name]["dtype"], "BF16");
    header[name]["dtype"] = "I16".into();
    std::fs::write(&path, join_safetensors(&header, &data)).unwrap();
    match load_error(dir.path()) {
        Error::UnsupportedDtype { name: n, dtype, .. } => {
            assert_eq!(n, name);
            assert_eq!(dtype, "I16");
        }
        other => panic!("{other:?}"),
    }
}

/// A one-tensor GGUF file.
fn gguf_with(ty: GgmlType, data: Vec<u8>) -> Vec<u8> {
    let mut w = Writer::default();
    w.tensor("t", &[2, 32], ty, data);
    w.to_bytes()
}

#[test]
fn unsupported_gguf_quant_type() {
    // Q5_0 (ggml type 6): 22-byte blocks of 32 values; a valid file we do not decode.
    let bytes = gguf_with(GgmlType::Other(6), vec![0; 44]);
    let f = GgufFile::from_bytes(Path::new("q5.gguf"), &bytes).unwrap();
    match f.tensor("t") {
        Err(Error::UnsupportedDtype { name, .. }) => assert_eq!(name, "t"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn gguf_counts_and_lengths_that_lie() {
    let good = gguf_with(GgmlType::F32, vec![0; 2 * 32 * 4]);
    assert!(GgufFile::from_bytes(Path::new("ok.gguf"), &good).is_ok());
    // Offsets: tensor count at 8, metadata count at 16, the first tensor's name length at 24.
    for (at, value) in [(8, u64::MAX), (8, 1 << 40), (16, 1 << 40), (24, u64::MAX)] {
        let mut lying = good.clone();
        lying[at..at + 8].copy_from_slice(&value.to_le_bytes());
        match GgufFile::from_bytes(Path::new("lying.gguf"), &lying) {
            Err(Error::BadModelFile { path, .. }) => assert_eq!(path, Path::new("lying.gguf")),
            other => panic!("field at {at} = {value}: {:?}", other.map(|_| ())),
        }
    }
    // A tensor whose data would run past the end of the file.
    let cut = &good[..good.len() - 4];
    assert!(matches!(
        GgufFile::from_bytes(Path::new("cut.gguf"), cut),
        Err(Error::BadModelFile { .. })
    ));
}

#[test]
fn gguf_bit_flips_never_panic() {
    let bytes = std::fs::read(fixture("mobilevlm_v2").join("mmproj-model-f16.gguf")).unwrap();
    let mut refused = 0;
    // The header region (metadata and tensor infos) is the first few KiB.
    let end = bytes.len().min(16 << 10);
    for i in (0..end).step_by(3) {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x5A;
        match GgufFile::from_bytes(Path::new("flipped.gguf"), &flipped) {
            Ok(f) => {
                let names: Vec<String> = f.tensors.keys().cloned().collect();
                for n in names {
                    if let Err(e) = f.tensor(&n) {
                        assert!(
                            matches!(
                                e,
                                Error::UnsupportedDtype { .. } | Error::BadModelFile { .. }
                            ),
                            "byte {i}: {e:?}"
                        );
                    }
                }
            }
            Err(Error::BadModelFile { .. }) => refused += 1,
            Err(e) => panic!("byte {i}: untyped {e:?}"),
        }
    }
    assert!(refused > 0);
}

// ---------------------------------------------------------------- images through the engine

#[test]
fn odd_images_go_through_the_model() {
    let mut engine = Engine::spawn();
    send_load(&mut engine, fixture("mobilevlm_v2"));
    assert_eq!(load_outcome(&engine).unwrap(), "mobilevlm-v2");
    let images = fixture("images");
    for name in [
        "tiny_1x1.png",
        "jpeg_1x1.jpg",
        "cmyk.jpg",
        "gray16.png",
        "rgba.png",
        "gray_alpha.png",
        "palette_trns.png",
        "exif_rot6.jpg",
    ] {
        let msg = Message::user("What is in the image?").with_image(images.join(name));
        engine
            .send(Command::Generate(request(vec![msg], 2)))
            .unwrap();
        assert_eq!(
            generation_outcome(&engine).unwrap_or_else(|e| panic!("{name}: {e}")),
            (StopReason::MaxTokens, 2),
            "{name}"
        );
    }
}

#[test]
fn bad_images_are_refused_and_the_engine_stays_usable() {
    let mut engine = Engine::spawn();
    send_load(&mut engine, fixture("mobilevlm_v2"));
    load_outcome(&engine).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "this is not a picture\n").unwrap();
    let jpeg = std::fs::read(fixture("images").join("photo_wide.jpg")).unwrap();
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &jpeg[..jpeg.len() / 3]).unwrap();
    let cases = [
        (text, ImageErrorKind::Unsupported),
        (truncated, ImageErrorKind::Corrupt),
        (
            fixture("images").join("huge_30000x30000.png"),
            ImageErrorKind::TooLarge,
        ),
    ];
    for (path, kind) in cases {
        let msg = Message::user("Describe it.").with_image(&path);
        engine
            .send(Command::Generate(request(vec![msg], 2)))
            .unwrap();
        match generation_outcome(&engine) {
            Err(Error::Image {
                path: p, kind: k, ..
            }) => {
                assert_eq!(p, path);
                assert_eq!(k, kind, "{}", path.display());
            }
            other => panic!("{}: {other:?}", path.display()),
        }
        assert_still_generates(&mut engine);
    }
}

// ---------------------------------------------------------------- cancel

#[test]
fn cancel_during_load_stops_before_the_next_tensor() {
    let reads = AtomicUsize::new(0);
    // The user cancels once three tensors have been read.
    let cancelled = || reads.fetch_add(1, Ordering::SeqCst) >= 3;
    let result = Session::load_cancellable(
        &fixture("llama_mha"),
        &LoadOptions::default(),
        &mut |_, _| {},
        &cancelled,
    );
    assert!(
        matches!(result, Err(Error::Cancelled)),
        "{:?}",
        result.err()
    );
    // A cancelled load leaves nothing behind: the next load works.
    Session::load(&fixture("llama_mha"), &LoadOptions::default()).unwrap();
}

#[test]
fn cancel_of_a_queued_load_through_the_engine() {
    let mut engine = Engine::spawn();
    send_load(&mut engine, fixture("llama_mha"));
    load_outcome(&engine).unwrap();
    // A long generation runs; a load waits behind it; the user presses Cancel.
    let msg = vec![Message::user("Tell me a long story.")];
    engine.send(Command::Generate(request(msg, 200))).unwrap();
    send_load(&mut engine, fixture("llama_gqa"));
    engine.cancel();
    let (stop, tokens) = generation_outcome(&engine).unwrap();
    assert_eq!(stop, StopReason::Cancelled);
    assert!(tokens < 200);
    assert!(matches!(load_outcome(&engine), Err(Error::Cancelled)));
    // No model now (the load replaced it); a fresh load and generation work.
    let text = vec![Message::user("Hi")];
    engine.send(Command::Generate(request(text, 2))).unwrap();
    assert!(matches!(generation_outcome(&engine), Err(Error::NoModel)));
    send_load(&mut engine, fixture("llama_gqa"));
    load_outcome(&engine).unwrap();
    assert_still_generates(&mut engine);
}

#[test]
fn cancel_during_prefill_stops_between_chunks() {
    let opts = LoadOptions {
        prefill_chunk: Some(128),
        ..Default::default()
    };
    let mut session = Session::load(&fixture("llama_mha"), &opts).unwrap();
    let reference = Reference::open(&fixture("llama_mha"));
    // A 200-token prompt is prefilled in two chunks of 128; the cancel arrives after the
    // first.
    let ids: Vec<u32> = reference
        .ids("input_ids")
        .into_iter()
        .cycle()
        .take(200)
        .collect();
    let polls = Cell::new(0);
    let params = SamplingParams {
        max_tokens: 8,
        ignore_eos: true,
        ..Default::default()
    };
    let g = session
        .generate(
            &ids,
            &params,
            &|| {
                polls.set(polls.get() + 1);
                polls.get() >= 2
            },
            &mut |_| Ok(()),
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::Cancelled);
    assert!(g.tokens.is_empty());
    assert_eq!(polls.get(), 2, "polled once per prefill chunk");
    // The same session then answers the reference prompt exactly.
    let expected = reference.ids("generated_ids");
    let params = SamplingParams {
        max_tokens: expected.len(),
        ignore_eos: true,
        ..Default::default()
    };
    let g = session
        .generate(&reference.ids("input_ids"), &params, &|| false, &mut |_| {
            Ok(())
        })
        .unwrap();
    assert_eq!(g.tokens, expected);
}

// ---------------------------------------------------------------- models and the thread

#[test]
fn loading_a_second_model_while_one_generates() {
    let mut engine = Engine::spawn();
    send_load(&mut engine, fixture("llama_mha"));
    load_outcome(&engine).unwrap();
    let msg = vec![Message::user("Count to a hundred.")];
    engine.send(Command::Generate(request(msg, 40))).unwrap();
    // Without a cancel the running answer completes, then the new model loads.
    send_load(&mut engine, fixture("mobilevlm_v2"));
    assert_eq!(
        generation_outcome(&engine).unwrap(),
        (StopReason::MaxTokens, 40)
    );
    assert_eq!(load_outcome(&engine).unwrap(), "mobilevlm-v2");
    assert_still_generates(&mut engine);
}

#[test]
fn a_panic_in_the_engine_becomes_an_error_event() {
    let mut engine = Engine::spawn();
    send_load(&mut engine, fixture("llama_mha"));
    load_outcome(&engine).unwrap();
    engine
        .send(Command::DebugPanic("kernel exploded".into()))
        .unwrap();
    match next(engine.events()) {
        Event::Error(Error::EngineStopped(msg)) => {
            assert!(msg.contains("kernel exploded"), "{msg}");
            assert!(msg.contains("model unloaded"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(engine.is_running());
    // The model was dropped (its state may be inconsistent); reloading brings it back.
    let text = vec![Message::user("Hi")];
    engine.send(Command::Generate(request(text, 2))).unwrap();
    assert!(matches!(generation_outcome(&engine), Err(Error::NoModel)));
    send_load(&mut engine, fixture("llama_mha"));
    load_outcome(&engine).unwrap();
    assert_still_generates(&mut engine);
}
