//! tokenizer.json and chat templates against Python's tokenizers/transformers output.

use pocketvlm_engine::load::tokenizer::Tokenizer;
use pocketvlm_engine::{Message, Role};
use pocketvlm_tests::fixture;
use serde_json::Value;

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("tokenizer").join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixture("tokenizer")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn encodes_and_decodes_like_python() {
    let tok = tokenizer();
    let cases = cases();
    let encode = cases["encode"].as_array().unwrap();
    assert!(encode.len() >= 8);
    for case in encode {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, expected, "encoding {text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "decoding {text:?} without special tokens"
        );
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    let tok = tokenizer();
    let template = tok
        .chat_template
        .as_ref()
        .expect("fixture has a chat template");
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
        let rendered = template.render(&messages, add).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
    }
}

#[test]
fn streaming_decode_reassembles_multibyte_text() {
    // Emoji and CJK split across byte-level tokens must come out whole, never as U+FFFD.
    let tok = tokenizer();
    let text = "Ünïcödé: café, 東京, 😀👍🏽 done";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = pocketvlm_engine::generate::TextStream::default();
    let mut out = String::new();
    for id in ids {
        if let Some(piece) = stream.push(&tok, id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
    }
    out.push_str(&stream.finish(&tok).unwrap());
    assert_eq!(out, text);
}
