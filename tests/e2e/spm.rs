//! Tokenizers without a tokenizer.json against Python: SentencePiece `tokenizer.model` with
//! transformers 4's slow LlamaTokenizer rules (tests/reference/fixtures_spm.py, checked
//! against transformers 4.40 and 4.57), plain sentencepiece, and a GPT-2 style
//! vocab.json + merges.txt directory (transformers 5 / `tokenizers`).

use std::path::Path;

use pocketvlm_engine::Error;
use pocketvlm_engine::generate::TextStream;
use pocketvlm_engine::load::spm::{SpmError, SpmModel};
use pocketvlm_engine::load::tokenizer::{Tokenizer, TokenizerKind, TokenizerPreference};
use pocketvlm_tests::fixture;
use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of ids: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn spm_cases() -> Value {
    read_json(&fixture("spm").join("cases.json"))
}

/// The fixture's tokenizer.model with another tokenizer_config.json.
fn with_config(config: &Value) -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("spm").join("tokenizer.model"),
        dir.path().join("tokenizer.model"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, tok)
}

/// Streams `ids` through TextStream; returns the text and whether a delta held U+FFFD.
fn stream(tok: &Tokenizer, ids: &[u32]) -> (String, bool) {
    let mut s = TextStream::default();
    let mut out = String::new();
    let mut replacement = false;
    for &id in ids {
        if let Some(piece) = s.push(tok, id).unwrap() {
            replacement |= piece.contains('\u{FFFD}');
            out.push_str(&piece);
        }
    }
    out.push_str(&s.finish(tok).unwrap());
    (out, replacement)
}

/// Every case of one variant; returns the mismatches (all of them, not just the first).
fn check_variant(name: &str, tok: &Tokenizer, cases: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut expect = |what: String, got: &dyn std::fmt::Debug, want: &dyn std::fmt::Debug| {
        let (g, w) = (format!("{got:?}"), format!("{want:?}"));
        if g != w {
            bad.push(format!("{name}: {what}\n   got {g}\n  want {w}"));
        }
    };
    for case in cases {
        let decoded = case["decoded"].as_str().unwrap();
        let skipped = case["decoded_skip_special"].as_str().unwrap();
        if let Some(only) = case.get("ids_only") {
            let only = ids(only);
            expect(
                format!("decode {only:?}"),
                &tok.decode(&only, false).unwrap(),
                &decoded,
            );
            expect(
                format!("decode {only:?} skipping special"),
                &tok.decode(&only, true).unwrap(),
                &skipped,
            );
            continue;
        }
        let text = case["text"].as_str().unwrap();
        let plain = ids(&case["ids"]);
        let special = ids(&case["ids_with_special"]);
        expect(
            format!("encode {text:?}"),
            &tok.encode(text, false).unwrap(),
            &plain,
        );
        expect(
            format!("encode {text:?} with special tokens"),
            &tok.encode(text, true).unwrap(),
            &special,
        );
        expect(
            format!("decode of {text:?}"),
            &tok.decode(&special, false).unwrap(),
            &decoded,
        );
        expect(
            format!("decode of {text:?} skipping special"),
            &tok.decode(&special, true).unwrap(),
            &skipped,
        );
        expect(
            format!("decode of {text:?} without BOS"),
            &tok.decode(&plain, false).unwrap(),
            &case["decoded_no_bos"].as_str().unwrap(),
        );
    }
    bad
}

#[test]
fn fixture_directory_loads_the_slow_llama_tokenizer() {
    let tok = Tokenizer::from_dir(&fixture("spm")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tok.kind(), TokenizerKind::SentencePiece);
    assert!(tok.path().ends_with("tokenizer.model"));
    assert_eq!(tok.bos_token.as_deref(), Some("<s>"));
    assert_eq!(tok.eos_token.as_deref(), Some("</s>"));
    assert_eq!(tok.token_to_id("</s>"), Some(2));
    assert_eq!(tok.token_to_id("<0x0A>"), Some(13));
    assert_eq!(tok.token_to_id("no such piece"), None);
    assert_eq!(tok.id_to_token(1).as_deref(), Some("<s>"));
    assert_eq!(tok.vocab_size(), 1000);
    let cases = spm_cases();
    let default = &cases["variants"]["default"];
    assert_eq!(
        read_json(&fixture("spm").join("tokenizer_config.json")),
        default["tokenizer_config"]
    );
    let bad = check_variant("fixture", &tok, default["cases"].as_array().unwrap());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_config_variant_matches_python() {
    let cases = spm_cases();
    let variants = cases["variants"].as_object().unwrap();
    assert!(variants.len() >= 3);
    let mut bad = Vec::new();
    let mut checked = 0;
    for (name, variant) in variants {
        let (_dir, tok) = with_config(&variant["tokenizer_config"]);
        let list = variant["cases"].as_array().unwrap();
        checked += list.len();
        bad.extend(check_variant(name, &tok, list));
    }
    assert!(checked > 90, "only {checked} cases");
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn legacy_false_differs_after_special_tokens() {
    // The point of the variants: the same text tokenizes differently after `</s>`.
    let cases = spm_cases();
    let find = |variant: &str| {
        cases["variants"][variant]["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Blue.</s>USER"))
            })
            .map(|c| ids(&c["ids"]))
            .unwrap()
    };
    assert_ne!(find("default"), find("legacy_false"));
}

#[test]
fn raw_sentencepiece_matches_the_library() {
    let model = SpmModel::from_file(&fixture("spm").join("tokenizer.model")).unwrap();
    let cases = spm_cases();
    assert_eq!(model.len() as u64, cases["vocab_size"].as_u64().unwrap());
    assert_eq!(model.bos_id(), Some(1));
    assert_eq!(model.eos_id(), Some(2));
    assert_eq!(model.unk_id(), 0);
    for case in cases["sentencepiece"].as_array().unwrap() {
        let decoded = case["decoded"].as_str().unwrap();
        if let Some(only) = case.get("ids_only") {
            assert_eq!(model.decode(&ids(only)).unwrap(), decoded);
            continue;
        }
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let pieces: Vec<String> = model
            .encode_pieces(text)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let want_pieces: Vec<String> = case["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        assert_eq!(pieces, want_pieces, "pieces of {text:?}");
        assert_eq!(model.encode(text), want, "ids of {text:?}");
        assert_eq!(model.decode(&want).unwrap(), decoded, "decode of {text:?}");
    }
}

/// TextStream releases the stable part of a full decode at every token, so the streamed
/// text equals the whole decode for every tokenizer variant, legacy SentencePiece rules and
/// clean-up of spaces included.
#[test]
fn streaming_decode_reproduces_the_text() {
    let cases = spm_cases();
    for variant in ["legacy_false", "default", "added"] {
        let (_dir, tok) = with_config(&cases["variants"][variant]["tokenizer_config"]);
        for case in cases["variants"][variant]["cases"].as_array().unwrap() {
            let list = ids(case.get("ids_with_special").unwrap_or(&case["ids_only"]));
            let whole = tok.decode(&list, true).unwrap();
            let (streamed, replacement) = stream(&tok, &list);
            assert_eq!(streamed, whole, "{variant}: streaming {list:?}");
            // Byte-fallback characters (emoji, CJK) come out whole, never as U+FFFD.
            assert!(
                !replacement || whole.contains('\u{FFFD}'),
                "{variant}: {list:?}"
            );
        }
    }
}

#[test]
fn sentencepiece_is_preferred_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(fixture("spm").join(name), dir.path().join(name)).unwrap();
    }
    std::fs::copy(
        fixture("tokenizer").join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let auto = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(auto.kind(), TokenizerKind::HuggingFaceJson);
    let slow = Tokenizer::from_dir_with(dir.path(), TokenizerPreference::SentencePiece).unwrap();
    assert_eq!(slow.kind(), TokenizerKind::SentencePiece);
    assert_eq!(slow.encode("Hello world", true).unwrap(), [1, 589, 418]);
    // Without a tokenizer.model the preference falls back to tokenizer.json.
    std::fs::remove_file(dir.path().join("tokenizer.model")).unwrap();
    let json = Tokenizer::from_dir_with(dir.path(), TokenizerPreference::SentencePiece).unwrap();
    assert_eq!(json.kind(), TokenizerKind::HuggingFaceJson);
}

#[test]
fn gpt2_directory_matches_python() {
    let dir = fixture("spm").join("gpt2_bpe");
    assert!(!dir.join("tokenizer.json").exists());
    let tok = Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tok.kind(), TokenizerKind::Gpt2Bpe);
    assert_eq!(tok.eos_token.as_deref(), Some("<|endoftext|>"));
    let cases = read_json(&dir.join("cases.json"));
    assert_eq!(
        tok.vocab_size() as u64,
        cases["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(tok.token_to_id("<image>"), Some(560));
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let plain = ids(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), plain, "encode {text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids_with_special"]),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&plain, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        let skipped = tok.decode(&plain, true).unwrap();
        assert_eq!(
            skipped,
            case["decoded_skip_special"].as_str().unwrap(),
            "{text:?}"
        );
        assert_eq!(stream(&tok, &plain).0, skipped, "streaming {text:?}");
    }
}

#[test]
fn gpt2_config_can_add_bos() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("spm").join("gpt2_bpe");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let cfg_path = dir.path().join("tokenizer_config.json");
    let mut cfg = read_json(&cfg_path);
    cfg["add_bos_token"] = Value::Bool(true);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    let plain = tok.encode("Hello world", false).unwrap();
    let with = tok.encode("Hello world", true).unwrap();
    assert_eq!(with[0], eot);
    assert_eq!(&with[1..], plain.as_slice());
}

fn expect_tokenizer_error(dir: &Path, contains: &str) {
    match Tokenizer::from_dir(dir) {
        Err(Error::Tokenizer { path, reason }) => {
            assert!(path.ends_with("tokenizer.model"), "{}", path.display());
            assert!(reason.contains(contains), "{reason:?} lacks {contains:?}");
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("a broken tokenizer.model loaded"),
    }
}

#[test]
fn malformed_tokenizer_model_is_a_typed_error() {
    let good = std::fs::read(fixture("spm").join("tokenizer.model")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.model");

    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    expect_tokenizer_error(dir.path(), "truncated");

    // Deterministic garbage.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    expect_tokenizer_error(dir.path(), "");

    std::fs::write(&path, b"").unwrap();
    expect_tokenizer_error(dir.path(), "no pieces");

    // A unigram model: protobuf merges a second trainer_spec with model_type = UNIGRAM
    // into the first, which is exactly what sentencepiece would load.
    let mut unigram = good.clone();
    unigram.extend_from_slice(&[0x12, 0x02, 0x18, 0x01]);
    std::fs::write(&path, &unigram).unwrap();
    expect_tokenizer_error(dir.path(), "unigram");

    // Every truncation and every single-byte corruption of the head fails cleanly or loads.
    for cut in (0..good.len()).step_by(97) {
        let _ = SpmModel::from_bytes(&good[..cut]);
    }
    for at in 0..512.min(good.len()) {
        let mut b = good.clone();
        b[at] ^= 0xA5;
        if let Err(e) = SpmModel::from_bytes(&b) {
            assert!(!e.to_string().is_empty());
        }
    }
    assert!(matches!(
        SpmModel::from_bytes(&garbage),
        Err(SpmError::Malformed { .. } | SpmError::Truncated { .. } | SpmError::Invalid(_))
    ));
}

#[test]
fn unsupported_tokenizer_class_is_refused() {
    let (dir, _) = with_config(&serde_json::json!({}));
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "T5Tokenizer"}"#,
    )
    .unwrap();
    match Tokenizer::from_dir(dir.path()) {
        Err(Error::BadConfigValue { key, .. }) => assert_eq!(key, "tokenizer_class"),
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("T5Tokenizer rules are not implemented"),
    }
}
