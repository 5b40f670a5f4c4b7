//! Damaged checkpoints give typed errors that name the file and the reason.

use std::path::Path;

use pocketvlm_engine::{Error, LoadOptions, Session};
use pocketvlm_tests::scratch_copy;

fn load(dir: &Path) -> Error {
    match Session::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_config_key() {
    let dir = scratch_copy("llama_mha");
    edit_config(dir.path(), |v| {
        v.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    let e = load(dir.path());
    match &e {
        Error::MissingConfigKey { path, key } => {
            assert!(path.ends_with("config.json"));
            assert_eq!(key, "num_hidden_layers");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string()
            .contains("config.json: missing key `num_hidden_layers`"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let dir = scratch_copy("llama_mha");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    match load(dir.path()) {
        Error::BadModelFile { path, reason } => {
            assert!(path.ends_with("model.safetensors"));
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Cut inside the header itself.
    std::fs::write(&path, &bytes[..100]).unwrap();
    assert!(matches!(load(dir.path()), Error::BadModelFile { .. }));
}

#[test]
fn tensor_shape_disagrees_with_config() {
    let dir = scratch_copy("llama_mha");
    edit_config(dir.path(), |v| v["intermediate_size"] = 128.into());
    match load(dir.path()) {
        Error::ShapeMismatch {
            path,
            name,
            expected,
            actual,
        } => {
            assert!(path.ends_with("model.safetensors"));
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(expected, vec![128, 64]);
            assert_eq!(actual, vec![192, 64]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_architecture() {
    let dir = scratch_copy("llama_mha");
    edit_config(dir.path(), |v| {
        v["model_type"] = "mamba".into();
        v["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    });
    let e = load(dir.path());
    assert!(
        matches!(&e, Error::UnsupportedArchitecture { arch, path, .. }
        if arch == "mamba" && path.ends_with("config.json")),
        "{e:?}"
    );
    assert!(e.to_string().contains("supported: llama"), "{e}");
}

#[test]
fn missing_shard_and_tensor() {
    let dir = scratch_copy("llama_gqa");
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    match load(dir.path()) {
        Error::Io { path, .. } => assert!(path.ends_with("model-00002-of-00002.safetensors")),
        other => panic!("{other:?}"),
    }

    // A checkpoint whose index forgets a tensor.
    let dir = scratch_copy("llama_gqa");
    let index = dir.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("model.norm.weight");
    std::fs::write(&index, v.to_string()).unwrap();
    assert!(
        matches!(load(dir.path()), Error::MissingTensor { name, .. } if name == "model.norm.weight")
    );
}

#[test]
fn missing_tokenizer_and_not_a_directory() {
    let dir = scratch_copy("llama_mha");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert!(
        matches!(load(dir.path()), Error::Tokenizer { path, .. } if path.ends_with("tokenizer.json"))
    );

    let file = dir.path().join("config.json");
    assert!(matches!(load(&file), Error::BadModelFile { .. }));
    assert!(matches!(load(&dir.path().join("nope")), Error::Io { .. }));
}

#[test]
fn garbage_config_json() {
    let dir = scratch_copy("llama_mha");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    match load(dir.path()) {
        Error::BadModelFile { path, reason } => {
            assert!(path.ends_with("config.json"));
            assert!(reason.contains("JSON"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn old_phi_msft_layout_is_refused_with_advice() {
    let dir = scratch_copy("imp_v1");
    // The layout of early Imp revisions: phi-msft's `n_embd` naming (and a fused Wqkv).
    edit_config(dir.path(), |v| v["n_embd"] = v["hidden_size"].clone());
    let e = load(dir.path());
    assert!(
        matches!(&e, Error::UnsupportedArchitecture { arch, .. } if arch.contains("phi-msft")),
        "{e:?}"
    );
    assert!(e.to_string().contains("newer revision"), "{e}");
}

#[test]
fn unsupported_projector_is_refused() {
    let dir = scratch_copy("mobilevlm_v2");
    edit_config(dir.path(), |v| v["mm_projector_type"] = "qformer".into());
    match load(dir.path()) {
        Error::BadConfigValue { path, key, reason } => {
            assert!(path.ends_with("config.json"));
            assert_eq!(key, "mm_projector_type");
            assert!(reason.contains("`qformer` is not supported"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
