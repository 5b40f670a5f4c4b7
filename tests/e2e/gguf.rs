//! GGUF and quantised checkpoints: `quantize` output loads back exactly, LLaMA GGUF files
//! (Q/K rows permuted, interleaved RoPE) match the Hugging Face layout, llama.cpp mmproj
//! files pair with an LLM GGUF into MobileVLM, and k-quants decode like gguf-py.

use pocketvlm_engine::load::gguf::GgufFile;
use pocketvlm_engine::model::{ImageId, Logits, Segment};
use pocketvlm_engine::quantize::{quantize_checkpoint, write_gguf};
use pocketvlm_engine::tensor::DType;
use pocketvlm_engine::{LoadOptions, Message, Session};
use pocketvlm_tests::{Reference, exact, fixture, max_abs_diff};

fn load(path: &std::path::Path, opts: LoadOptions) -> Session {
    Session::load(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn with_quant(quant: Option<DType>) -> LoadOptions {
    LoadOptions { quant, ..exact() }
}

#[test]
fn quantised_directories_load_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, dtype) in [
        ("llama_gqa", DType::Q4_0),
        ("llama_mha", DType::Q8_0),
        ("llama_scaled", DType::Q4_1),
    ] {
        let out = tmp.path().join(format!("{name}-{dtype}"));
        let report = quantize_checkpoint(&fixture(name), &out, dtype, None).unwrap();
        assert!(
            report.converted > 0 && report.bytes_out < report.bytes_in,
            "{report:?}"
        );
        let ids = Reference::open(&fixture(name)).ids("input_ids");
        let from_dir = load(&out, exact()).logits(&ids).unwrap();
        let on_load = load(&fixture(name), with_quant(Some(dtype)))
            .logits(&ids)
            .unwrap();
        assert_eq!(
            from_dir, on_load,
            "{name} {dtype}: bit-identical to quantise-on-load"
        );
    }
    // A vision model: the LLM and the vision tower/projector each in their own format.
    let out = tmp.path().join("mobilevlm");
    quantize_checkpoint(
        &fixture("mobilevlm_v2"),
        &out,
        DType::Q4_0,
        Some(DType::Q8_0),
    )
    .unwrap();
    let info = load(&out, exact()).info().clone();
    assert!(
        info.dtypes.contains_key("q4_0") && info.dtypes.contains_key("q8_0"),
        "{:?}",
        info.dtypes
    );
    let mut a = load(&out, exact());
    let mut b = load(
        &fixture("mobilevlm_v2"),
        LoadOptions {
            quant: Some(DType::Q4_0),
            vision_quant: Some(DType::Q8_0),
            ..exact()
        },
    );
    let msg =
        [Message::user("What is it?").with_image(fixture("images").join("shapes_square.png"))];
    let (pa, pb) = (
        a.prompt(&msg, false).unwrap(),
        b.prompt(&msg, false).unwrap(),
    );
    assert_eq!(a.prompt_logits(&pa).unwrap(), b.prompt_logits(&pb).unwrap());

    // An existing, non-empty output directory is refused.
    let err = quantize_checkpoint(&fixture("llama_gqa"), &out, DType::Q4_0, None).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

#[test]
fn llama_gguf_matches_the_hugging_face_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, dtype) in [
        ("llama_gqa", DType::F32),
        ("llama_mha", DType::Q8_0),
        ("llama_gqa", DType::Q4_0),
    ] {
        let path = tmp.path().join(format!("{name}-{dtype}.gguf"));
        write_gguf(&fixture(name), &path, dtype).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(
            file.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert!(file.tensors.contains_key("blk.1.attn_q.weight"));

        let mut gguf = load(&path, exact());
        let mut hf = load(&fixture(name), with_quant(Some(dtype)));
        // Same tokenizer and template, rebuilt from GGUF metadata.
        let msg = [Message::user("What is the capital of France? Ünïcödé 😀")];
        let ids = hf.prompt(&msg, false).unwrap().text_tokens();
        assert_eq!(
            gguf.prompt(&msg, false).unwrap().text_tokens(),
            ids,
            "{name}"
        );
        // Permuted Q/K with interleaved RoPE give the HF layout's logits. Quantised
        // weights prefill with bf16 activations (on CPUs with AVX-512 BF16): the permuted
        // head dimension sums q·k in another order, and a last-bit difference can round an
        // activation to the neighbouring bf16 value (2⁻⁸ apart), so they agree to bf16's
        // resolution; a wrong layout is off by the logits' own size.
        let (a, b) = (gguf.logits(&ids).unwrap(), hf.logits(&ids).unwrap());
        let (d, s) = max_abs_diff(&a, &b);
        let tol = if dtype.is_quantized() { 4e-3 } else { 1e-4 };
        assert!(d <= tol * s, "{name} {dtype}: {d} of {s}");
        if dtype == DType::F32 {
            let (_, reference) = Reference::open(&fixture(name)).f32("logits");
            let ref_ids = Reference::open(&fixture(name)).ids("input_ids");
            let (d, s) = max_abs_diff(&gguf.logits(&ref_ids).unwrap(), &reference);
            assert!(d <= 1e-4 * s, "{name}: GGUF vs transformers {d}");
        }
    }
}

#[test]
fn sentencepiece_tokenizer_survives_the_gguf_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mobilellama.gguf");
    write_gguf(&fixture("mobilevlm_v2"), &path, DType::F32).unwrap();
    let gguf = load(&path, exact());
    let hf = load(&fixture("mobilevlm_v2"), exact());
    for text in [
        "USER: What is shown in this image? ASSISTANT:",
        "  two  spaces\nnewline 😀 東京",
        "",
    ] {
        assert_eq!(
            gguf.tokenizer().encode(text, true).unwrap(),
            hf.tokenizer().encode(text, true).unwrap(),
            "{text:?}"
        );
    }
}

/// MobileVLM from an LLM GGUF plus llama.cpp's mmproj: the reference numbers.
#[test]
fn mmproj_gguf_pairs_into_mobilevlm() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["mobilevlm_v1", "mobilevlm_v2"] {
        let dir = fixture(name);
        let llm = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&dir, &llm, DType::F32).unwrap();
        let mut session = load(
            &llm,
            LoadOptions {
                mmproj: Some(dir.join("mmproj-model-f16.gguf")),
                ..exact()
            },
        );
        assert!(
            session.info().family.starts_with("mobilevlm"),
            "{}",
            session.info().family
        );
        let reference = Reference::open(&dir);
        let (_, pixels) = reference.f32("pixel_values.0");
        let feats = session.model_mut().vision_features(&pixels).unwrap();
        let (_, expected) = reference.f32("vision_features.0");
        let (d, s) = max_abs_diff(&feats, &expected);
        assert!(d <= 1e-4 * s, "{name} vision features {d} of {s}");
        let id: ImageId = session.model_mut().encode_image(&pixels).unwrap();
        let (_, expected) = reference.f32("image_features.0");
        let (d, s) = max_abs_diff(&session.model().image_embeddings(id).unwrap(), &expected);
        assert!(d <= 1e-4 * s, "{name} projector {d} of {s}");

        // Logits with the image spliced in, from the reference ids.
        let ids = reference.i64("input_ids");
        let split = ids.iter().position(|&t| t == -200).unwrap();
        let before: Vec<u32> = ids[..split].iter().map(|&t| t as u32).collect();
        let after: Vec<u32> = ids[split + 1..].iter().map(|&t| t as u32).collect();
        let rows = session.model().image_tokens().unwrap();
        let segs = [
            Segment::Tokens(&before),
            Segment::Image { id, rows: 0..rows },
            Segment::Tokens(&after),
        ];
        let logits = session.model_mut().forward(&segs, 0, Logits::All).unwrap();
        let (shape, tail) = reference.f32("logits_tail");
        let (d, s) = max_abs_diff(&logits[logits.len() - shape[0] * shape[1]..], &tail);
        assert!(d <= 1e-4 * s, "{name} logits {d} of {s}");

        // And the prompt the session builds matches the reference tokenisation.
        let msg = [Message::user("What is shown in this image?")
            .with_image(fixture("images").join("shapes_square.png"))];
        let prompt = session.prompt(&msg, false).unwrap();
        let mut flat = vec![];
        for p in &prompt.parts {
            match p {
                pocketvlm_engine::PromptPart::Tokens(t) => {
                    flat.extend(t.iter().map(|&t| i64::from(t)))
                }
                pocketvlm_engine::PromptPart::Image(_) => flat.push(-200),
            }
        }
        assert_eq!(flat, ids, "{name}");
    }
}

#[test]
fn k_quants_decode_like_gguf_py() {
    use pocketvlm_engine::quant::kquants;
    let r = Reference::open(&fixture("kquants"));
    let file = pocketvlm_engine::load::safetensors::SafetensorsFile::open(
        &fixture("kquants").join("reference.safetensors"),
    )
    .unwrap();
    for (name, decode) in [
        ("Q4_K", kquants::dequantize_q4_k as fn(&[u8], &mut [f32])),
        ("Q6_K", kquants::dequantize_q6_k),
    ] {
        let (_, bytes) = file.raw(&format!("{name}.bytes")).unwrap();
        let (_, expected) = r.f32(&format!("{name}.values"));
        let mut got = vec![0.0; expected.len()];
        decode(bytes, &mut got);
        assert_eq!(got, expected, "{name}");
    }
}

/// Q4_0, Q4_1 and Q8_0 are ggml's bytes: our reference quantisers write exactly what
/// gguf-py's (ports of ggml's `quantize_row_*_ref`) write for the same f32 rows, and our
/// dequantisers read gguf-py's blocks to gguf-py's values.
#[test]
fn block_formats_are_byte_identical_to_gguf_py() {
    use pocketvlm_engine::quant::quantize_ref;
    use pocketvlm_engine::tensor::{DType, convert_to_f32};
    let r = Reference::open(&fixture("kquants"));
    let file = pocketvlm_engine::load::safetensors::SafetensorsFile::open(
        &fixture("kquants").join("reference.safetensors"),
    )
    .unwrap();
    for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
        let name = format!("{dtype}").to_uppercase();
        let (_, input) = r.f32(&format!("{name}.input"));
        let (_, bytes) = file.raw(&format!("{name}.bytes")).unwrap();
        let (_, values) = r.f32(&format!("{name}.values"));
        let ours = quantize_ref(dtype, &input);
        assert_eq!(ours.len(), bytes.len(), "{name}: byte count");
        let first_diff = ours.iter().zip(bytes).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{name}: first differing byte");
        let mut got = vec![0.0; values.len()];
        convert_to_f32(dtype, bytes, &mut got);
        assert_eq!(got, values, "{name}: dequantised values");
    }
}
