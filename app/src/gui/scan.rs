//! Finding models on this computer: the Hugging Face cache (`~/.cache/huggingface/hub`,
//! or `HF_HUB_CACHE` / `HF_HOME`) and PocketVLM's own models folder. Only headers and
//! config files are read, never weights, and it runs on a background thread.

use std::path::{Path, PathBuf};

use pocketvlm_engine::load::gguf::GgufFile;
use pocketvlm_engine::load::gguf_model;
use pocketvlm_engine::load::spec::read_model_spec;
use pocketvlm_engine::model::spec::{Family, ModelSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// `models--org--name/snapshots/<revision>/…`
    HuggingFaceCache,
    /// Model folders and GGUF files, one level deep.
    ModelsFolder,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRoot {
    pub path: PathBuf,
    pub kind: RootKind,
}

/// The Hugging Face cache and `<data dir>/models`.
pub fn default_roots(data_dir: &Path) -> Vec<ScanRoot> {
    let mut roots = Vec::new();
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let hf = env("HF_HUB_CACHE")
        .or_else(|| env("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| {
            directories::BaseDirs::new()
                .map(|b| b.home_dir().join(".cache").join("huggingface").join("hub"))
        });
    if let Some(hf) = hf {
        roots.push(ScanRoot {
            path: hf,
            kind: RootKind::HuggingFaceCache,
        });
    }
    roots.push(ScanRoot {
        path: data_dir.join("models"),
        kind: RootKind::ModelsFolder,
    });
    roots
}

/// A model found on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundModel {
    pub name: String,
    /// A checkpoint directory or a GGUF file.
    pub path: PathBuf,
    /// The projector file found beside a GGUF language model.
    pub mmproj: Option<PathBuf>,
    /// `mobilevlm-v2`, `imp-qwen2`, or the language model's architecture for text models.
    pub family: String,
    /// How the weights are stored: `bf16`, `q4_0`, ...
    pub quant: String,
    pub size_bytes: u64,
    /// Why it cannot be loaded, when the scan already knows.
    pub problem: Option<String>,
}

impl FoundModel {
    pub fn is_vision(&self) -> bool {
        !matches!(
            self.family.as_str(),
            "llama" | "qwen2" | "phi3" | "phi2" | "?"
        )
    }
}

/// Every model under `roots`, sorted by name.
pub fn scan(roots: &[ScanRoot]) -> Vec<FoundModel> {
    let mut out = Vec::new();
    for root in roots {
        match root.kind {
            RootKind::HuggingFaceCache => scan_hf_cache(&root.path, &mut out),
            RootKind::ModelsFolder => scan_folder(&root.path, &mut out, 1),
        }
    }
    out.sort_by_key(|m| m.name.to_lowercase());
    out.dedup_by(|a, b| a.path == b.path);
    out
}

fn scan_hf_cache(hub: &Path, out: &mut Vec<FoundModel>) {
    let Ok(repos) = std::fs::read_dir(hub) else {
        return;
    };
    for repo in repos.flatten() {
        let dir_name = repo.file_name().to_string_lossy().into_owned();
        let Some(rest) = dir_name.strip_prefix("models--") else {
            continue;
        };
        let repo_name = rest.replacen("--", "/", 1);
        // The newest snapshot is the one `from_pretrained` would use after an update.
        let newest = std::fs::read_dir(repo.path().join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        if let Some(snapshot) = newest {
            let before = out.len();
            scan_folder(&snapshot.path(), out, 0);
            for m in &mut out[before..] {
                m.name = if m.path == snapshot.path() {
                    repo_name.clone()
                } else {
                    format!("{repo_name} · {}", m.name)
                };
            }
        }
    }
}

/// The model in `dir` itself, its GGUF files, and (to `depth` more levels) its subfolders'.
fn scan_folder(dir: &Path, out: &mut Vec<FoundModel>, depth: usize) {
    if dir.join("config.json").is_file() {
        out.push(describe_dir(dir));
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    let ggufs: Vec<&PathBuf> = files.iter().filter(|p| is_gguf_name(p)).collect();
    let mmproj = ggufs
        .iter()
        .find(|p| is_mmproj_name(p))
        .map(|p| (*p).clone());
    for g in ggufs.iter().filter(|p| !is_mmproj_name(p)) {
        out.push(describe_gguf(g, mmproj.as_deref()));
    }
    if depth > 0 {
        for sub in files.iter().filter(|p| p.is_dir()) {
            scan_folder(sub, out, depth - 1);
        }
    }
}

fn is_gguf_name(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn is_mmproj_name(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().to_lowercase().contains("mmproj"))
}

fn family_of(spec: &ModelSpec) -> String {
    match spec.family {
        Family::TextOnly => spec.llm.arch.name().to_string(),
        f => f.name().to_string(),
    }
}

/// What a model path is, from its headers: a checkpoint folder or a GGUF file.
pub fn describe(path: &Path, mmproj: Option<&Path>) -> FoundModel {
    if path.is_dir() {
        describe_dir(path)
    } else {
        describe_gguf(path, mmproj)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn describe_dir(dir: &Path) -> FoundModel {
    let (family, problem) = match read_model_spec(dir) {
        Ok(spec) => (family_of(&spec), None),
        Err(e) => ("?".to_string(), Some(e.to_string())),
    };
    let quant = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("dtype")
                .or_else(|| v.get("torch_dtype"))
                .and_then(|d| d.as_str())
                .map(short_dtype)
        })
        .unwrap_or_else(|| "?".into());
    FoundModel {
        name: file_name(dir),
        path: dir.to_path_buf(),
        mmproj: None,
        family,
        quant,
        size_bytes: folder_size(dir, 2),
        problem,
    }
}

fn short_dtype(d: &str) -> String {
    match d {
        "float32" => "f32".into(),
        "float16" => "f16".into(),
        "bfloat16" => "bf16".into(),
        other => other.to_string(),
    }
}

fn describe_gguf(path: &Path, mmproj: Option<&Path>) -> FoundModel {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        + mmproj
            .and_then(|m| std::fs::metadata(m).ok())
            .map_or(0, |m| m.len());
    let mut found = FoundModel {
        name: file_name(path),
        path: path.to_path_buf(),
        mmproj: mmproj.map(Path::to_path_buf),
        family: "?".into(),
        quant: "?".into(),
        size_bytes: size,
        problem: None,
    };
    let file = match GgufFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            found.problem = Some(e.to_string());
            return found;
        }
    };
    // The most common type among the matrices is what people call the file's quantisation.
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for t in file.tensors.values().filter(|t| t.shape().len() == 2) {
        *counts
            .entry(format!("{:?}", t.ty).to_lowercase())
            .or_default() += 1;
    }
    if let Some((q, _)) = counts.into_iter().max_by_key(|(_, n)| *n) {
        found.quant = q;
    }
    let projector = mmproj.and_then(|m| GgufFile::open(m).ok());
    match gguf_model::model_spec(&file, projector.as_ref()) {
        Ok(spec) => found.family = family_of(&spec),
        Err(e) => found.problem = Some(e.to_string()),
    }
    found
}

/// Bytes of the files in `dir`, following links (the HF cache links to blobs), `depth`
/// folder levels down.
fn folder_size(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let p = e.path();
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => total += m.len(),
            Ok(m) if m.is_dir() && depth > 0 => total += folder_size(&p, depth - 1),
            _ => {}
        }
    }
    total
}

/// Runs [`scan`] on a background thread.
#[derive(Default)]
pub struct Scanner {
    rx: Option<crossbeam_channel::Receiver<Vec<FoundModel>>>,
    pub found: Vec<FoundModel>,
    pub scanned_once: bool,
}

impl Scanner {
    pub fn start(&mut self, ctx: &egui::Context, roots: Vec<ScanRoot>) {
        if self.rx.is_some() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("pocketvlm-scan".into())
            .spawn(move || {
                let _ = tx.send(scan(&roots));
                ctx.request_repaint();
            });
        if spawned.is_ok() {
            self.rx = Some(rx);
        }
    }

    pub fn is_scanning(&self) -> bool {
        self.rx.is_some()
    }

    pub fn poll(&mut self) {
        if let Some(rx) = &self.rx
            && let Ok(found) = rx.try_recv()
        {
            self.found = found;
            self.scanned_once = true;
            self.rx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    #[test]
    fn finds_the_fixture_models_with_family_and_size() {
        let found = scan(&[ScanRoot {
            path: fixtures(),
            kind: RootKind::ModelsFolder,
        }]);
        let llama = found.iter().find(|m| m.name == "llama_gqa").unwrap();
        assert_eq!(llama.family, "llama");
        assert!(llama.size_bytes > 0);
        assert!(!llama.is_vision());
        let vlm = found.iter().find(|m| m.name == "mobilevlm_v2").unwrap();
        assert_eq!(vlm.family, "mobilevlm-v2");
        assert!(vlm.is_vision());
        // Folders of images or tokenizers are not models.
        assert!(!found.iter().any(|m| m.name == "images"));
    }

    #[test]
    fn reads_the_hugging_face_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("models--org--tiny/snapshots/0123abcd");
        std::fs::create_dir_all(&snap).unwrap();
        for f in std::fs::read_dir(fixtures().join("llama_gqa")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), snap.join(f.file_name())).unwrap();
        }
        let found = scan(&[ScanRoot {
            path: tmp.path().to_path_buf(),
            kind: RootKind::HuggingFaceCache,
        }]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "org/tiny");
        assert_eq!(found[0].family, "llama");
    }
}
