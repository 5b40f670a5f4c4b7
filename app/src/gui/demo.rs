//! The bundled demo model and sample scenes, embedded in the binary so that the app answers
//! out of the box (see `assets/demo/README.md`).
//!
//! The model is an ordinary MobileVLM V2 checkpoint directory; at start-up it is written
//! (once, and again only when this build carries different bytes) into the app's
//! `models/` folder and loaded from there through the engine's normal path.

use std::io;
use std::path::{Path, PathBuf};

use super::store::write_atomic;

/// The folder name of the demo model under the app's `models/` folder.
pub const DEMO_DIR: &str = "pocketvlm-demo";

/// The checkpoint's files: (path inside the checkpoint, bytes).
const FILES: [(&str, &[u8]); 8] = [
    (
        "config.json",
        include_bytes!("../../../assets/demo/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../assets/demo/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../../assets/demo/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../assets/demo/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../assets/demo/tokenizer_config.json"),
    ),
    (
        "special_tokens_map.json",
        include_bytes!("../../../assets/demo/special_tokens_map.json"),
    ),
    (
        "clip-vit-demo-patch16-192/config.json",
        include_bytes!("../../../assets/demo/clip-vit-demo-patch16-192/config.json"),
    ),
    (
        "clip-vit-demo-patch16-192/preprocessor_config.json",
        include_bytes!("../../../assets/demo/clip-vit-demo-patch16-192/preprocessor_config.json"),
    ),
];

/// A sample scene the composer offers one click away.
pub struct Sample {
    pub name: &'static str,
    /// The question put in the composer with it.
    pub question: &'static str,
    pub png: &'static [u8],
}

pub const SAMPLES: [Sample; 3] = [
    Sample {
        name: "shapes.png",
        question: "Describe the image.",
        png: include_bytes!("../../../assets/samples/shapes.png"),
    },
    Sample {
        name: "sign.png",
        question: "What does the text say?",
        png: include_bytes!("../../../assets/samples/sign.png"),
    },
    Sample {
        name: "night.png",
        question: "How many shapes are there?",
        png: include_bytes!("../../../assets/samples/night.png"),
    },
];

/// Where the demo model lives for the app with this data folder.
pub fn demo_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join(DEMO_DIR)
}

/// Writes the demo checkpoint into `data_dir/models/` where a file is missing or differs
/// from the embedded one; returns the checkpoint folder.
pub fn install(data_dir: &Path) -> io::Result<PathBuf> {
    let dir = demo_dir(data_dir);
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_atomic(&path, bytes)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_writes_the_checkpoint_once_and_repairs_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = install(tmp.path()).unwrap();
        assert_eq!(dir, demo_dir(tmp.path()));
        for (name, bytes) in FILES {
            assert_eq!(std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        }
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        install(tmp.path()).unwrap();
        assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), FILES[0].1);
    }
}
