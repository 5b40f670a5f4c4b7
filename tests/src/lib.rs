//! Helpers for the end-to-end tests: fixture paths, reading oracle references, and the
//! strict-mode rule for tests that need something from outside the repository.

use std::path::{Path, PathBuf};

use pocketvlm_engine::load::safetensors::SafetensorsFile;

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// True when tests must not skip (`POCKETVLM_STRICT=1`, set by CI).
pub fn strict() -> bool {
    std::env::var("POCKETVLM_STRICT").is_ok_and(|v| v == "1")
}

/// For a test that needs an external resource: in strict mode a missing resource is a
/// failure; otherwise the test is skipped with the reason printed.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if strict() {
        panic!("POCKETVLM_STRICT=1 and {what} is missing (tests/run.sh installs it)");
    }
    eprintln!("SKIPPED: {what} is missing (run tests/run.sh to install it)");
    false
}

/// A reference.safetensors written by tests/reference/gen_fixtures.py.
pub struct Reference {
    file: SafetensorsFile,
}

impl Reference {
    pub fn open(fixture_dir: &Path) -> Reference {
        let path = fixture_dir.join("reference.safetensors");
        Reference {
            file: SafetensorsFile::open(&path).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// An f32 tensor and its shape.
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self.file.tensor(name).unwrap_or_else(|e| panic!("{e}"));
        (t.shape.clone(), t.to_f32_vec())
    }

    /// An i64 tensor as u32 token ids.
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).into_iter().map(|v| v as u32).collect()
    }

    /// An i64 tensor (token ids that may hold the -200 image sentinel).
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let (entry, bytes) = self.file.raw(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entry.dtype, "I64", "{name}");
        bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.entry(name).is_some()
    }

    /// The JSON under the file's single `meta` metadata key.
    pub fn meta(&self) -> serde_json::Value {
        serde_json::from_str(&self.file.metadata()["meta"]).unwrap()
    }
}

/// max |a − b| and max |b|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f32::max);
    (diff, scale)
}

/// Copies a fixture directory to a temporary one that a test may damage.
pub fn scratch_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}
