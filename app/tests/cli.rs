//! The `pocketvlm` binary per the CLI contract: exit codes, stdout/stderr, file formats.

use std::process::{Command, Output};

use pocketvlm_engine::load::tokenizer::{Tokenizer, TokenizerPreference};
use pocketvlm_tests::{Reference, fixture, max_abs_diff};

fn pocketvlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pocketvlm"))
        .args(args)
        .output()
        .expect("running pocketvlm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_streams_the_greedy_answer_and_reports_timings() {
    let dir = fixture("llama_gqa");
    let reference = Reference::open(&dir);
    let expected_ids = reference.ids("generated_ids");
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let expected = tokenizer.decode(&expected_ids, true).unwrap();

    let out = pocketvlm(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        &expected_ids.len().to_string(),
        "--temp",
        "0",
        "--ignore-eos",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{expected}\n"));
    let err = text(&out.stderr);
    assert!(
        err.contains("tok/s") && err.contains("first token"),
        "{err}"
    );
    assert!(err.contains("stop: max tokens"), "{err}");
}

#[test]
fn logits_writes_f32_positions_by_vocab() {
    let dir = fixture("llama_mha");
    let reference = Reference::open(&dir);
    let ids = reference.ids("input_ids");
    let (shape, expected) = reference.f32("logits");
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("logits.bin");
    let ids_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");

    for args in [
        vec!["--ids", ids_arg.as_str()],
        vec!["--prompt", "What is the capital of France?"],
    ] {
        // An f32 KV cache: transformers' logits to 1e-4 (the default f16 cache is ~1e-3).
        let mut all = vec![
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--kv-cache",
            "f32",
        ];
        all.extend(args);
        all.extend(["--out", out_path.to_str().unwrap()]);
        let out = pocketvlm(&all);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let bytes = std::fs::read(&out_path).unwrap();
        assert_eq!(bytes.len(), shape[0] * shape[1] * 4);
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let (diff, scale) = max_abs_diff(&got, &expected);
        assert!(diff <= 1e-4 * scale, "{diff}");
    }
}

#[test]
fn info_describes_the_model() {
    let out = pocketvlm(&["info", "--model", fixture("llama_gqa").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("family:        llama"), "{s}");
    assert!(
        s.contains("2 heads (kv)") || s.contains("4 heads (2 kv)"),
        "{s}"
    );
    assert!(s.contains("f16"), "{s}");
}

#[test]
fn bad_input_exits_non_zero_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "run".into(),
            "--model".into(),
            tmp.path().join("missing").display().to_string(),
            "--prompt".into(),
            "hi".into(),
        ],
        vec![
            "run".into(),
            "--model".into(),
            tmp.path().display().to_string(),
            "--prompt".into(),
            "hi".into(),
        ],
        vec![
            "run".into(),
            "--model".into(),
            fixture("llama_mha").display().to_string(),
            "--prompt".into(),
            "hi".into(),
            "--top-p".into(),
            "0".into(),
        ],
        vec![
            "logits".into(),
            "--model".into(),
            fixture("llama_mha").display().to_string(),
            "--ids".into(),
            "1,99999".into(),
            "--out".into(),
            tmp.path().join("x").display().to_string(),
        ],
        vec![
            "run".into(),
            "--model".into(),
            fixture("llama_mha").display().to_string(),
            "--prompt".into(),
            "hi".into(),
            "--backend".into(),
            "gpu".into(),
        ],
    ];
    for args in cases {
        // No GPU adapter for these runs (no Vulkan driver, no GL fallback): `--backend gpu`
        // must then fail with one line.
        let out = Command::new(env!("CARGO_BIN_EXE_pocketvlm"))
            .args(&args)
            .env("WGPU_BACKEND", "vulkan")
            .env("VK_ICD_FILENAMES", "/nonexistent.json")
            .env("VK_DRIVER_FILES", "/nonexistent.json")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn vision_commands_follow_the_contract() {
    let dir = fixture("mobilevlm_v2");
    let reference = Reference::open(&dir);
    let image = fixture("images").join("shapes_square.png");
    let tmp = tempfile::tempdir().unwrap();
    let model = dir.to_str().unwrap();
    let img = image.to_str().unwrap();

    // info names the family and the tower.
    let out = pocketvlm(&["info", "--model", model]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("family:        mobilevlm-v2") && s.contains("144 image tokens"),
        "{s}"
    );

    // embed-image: the projector output, and the vision tower's selected layer.
    for (stage, key) in [
        ("projector", "image_features.0"),
        ("vision", "vision_features.0"),
    ] {
        let path = tmp.path().join(format!("{stage}.bin"));
        let out = pocketvlm(&[
            "embed-image",
            "--model",
            model,
            "--image",
            img,
            "--stage",
            stage,
            "--out",
            path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (_, expected) = reference.f32(key);
        let (d, s) = max_abs_diff(&read_f32(&path), &expected);
        assert!(d <= 1e-4 * s, "{stage}: {d}");
    }

    // logits with the -200 sentinel in explicit ids and the image spliced in.
    let ids: Vec<String> = reference
        .i64("input_ids")
        .iter()
        .map(i64::to_string)
        .collect();
    let path = tmp.path().join("logits.bin");
    let out = pocketvlm(&[
        "logits",
        "--model",
        model,
        "--image",
        img,
        "--ids",
        &ids.join(","),
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logits = read_f32(&path);
    let (shape, tail) = reference.f32("logits_tail");
    let (d, s) = max_abs_diff(&logits[logits.len() - shape[0] * shape[1]..], &tail);
    assert!(d <= 1e-4 * s, "logits {d}");

    // run --image streams the greedy answer.
    let expected = reference.ids("generated_ids");
    let tokenizer = Tokenizer::from_dir_with(&dir, TokenizerPreference::SentencePiece).unwrap();
    let out = pocketvlm(&[
        "run",
        "--model",
        model,
        "--image",
        img,
        "--prompt",
        "What is shown in this image?",
        "--max-tokens",
        &expected.len().to_string(),
        "--temp",
        "0",
        "--ignore-eos",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim_end(),
        tokenizer.decode(&expected, true).unwrap().trim_end()
    );
}

/// The README's quick start: the bundled demo model answers a question about a bundled
/// sample image correctly (its accuracy overall is `tests/e2e/demo.rs`'s business).
#[test]
fn run_answers_with_the_demo_model_about_a_sample_image() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("assets").join("demo");
    let image = root.join("assets").join("samples").join("shapes.png");
    let out = pocketvlm(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "What colour is the circle?",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert_eq!(answer.trim(), "The circle is blue.");
    assert!(text(&out.stderr).contains("stop: end of sequence"));
}
