//! Helpers for the end-to-end tests: fixture paths, reading oracle references, and the
//! strict-mode rule for tests that need something from outside the repository.

use std::path::{Path, PathBuf};

use pocketvlm_engine::LoadOptions;
use pocketvlm_engine::backend::cpu::KvPrecision;
use pocketvlm_engine::load::safetensors::SafetensorsFile;

/// Load options for matching transformers to 1e-4: the default otherwise, with an f32 KV
/// cache (the default f16 cache rounds each cached value to 11 bits; see
/// `llama::an_f16_kv_cache_keeps_greedy_tokens`).
pub fn exact() -> LoadOptions {
    LoadOptions {
        kv_cache: Some(KvPrecision::F32),
        ..Default::default()
    }
}

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

/// A top-1 margin (in logits) below which a greedy choice is a near-tie: f32 rounding of
/// another summation order or quantised activations may pick either token.
pub const NEAR_TIE: f32 = 0.01;

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

    /// How many greedy tokens of SmolLM2 case `case` are defined, i.e. decided by a margin
    /// rounding cannot overturn: the continuation up to the first position where
    /// transformers' top-1 leads its top-2 by less than `tie` logits, or where its own
    /// teacher-forced argmax leaves its greedy continuation.
    pub fn greedy_defined_len(&self, case: &str, tie: f32) -> usize {
        let prompt = self.ids(&format!("{case}.input_ids")).len();
        let generated = self.ids(&format!("{case}.generated_ids"));
        let argmax = self.ids(&format!("{case}.argmax"));
        let (_, gaps) = self.f32(&format!("{case}.top2_gap"));
        generated
            .iter()
            .enumerate()
            .take_while(|&(i, t)| {
                let at = prompt - 1 + i;
                argmax.get(at) == Some(t) && gaps.get(at).is_some_and(|&g| g >= tie)
            })
            .count()
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
        // A NaN anywhere is an infinite difference (`f32::max` would drop it).
        .fold(
            0.0,
            |m: f32, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        );
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f32::max);
    (diff, scale)
}

/// Copies a fixture directory (with its subdirectories, e.g. a vision tower's) to a
/// temporary one that a test may damage.
pub fn scratch_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(name), dir.path());
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}
