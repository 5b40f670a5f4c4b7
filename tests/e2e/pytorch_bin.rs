//! PyTorch `pytorch_model.bin` checkpoints: real torch.save files (tests/fixtures/pytorch,
//! written by tests/reference/fixtures_pytorch.py) read without running their pickle, tensor
//! for tensor equal to the same state dict in safetensors; hostile and damaged files refused
//! with typed errors; and whole models loaded from converted LLaMA fixtures.

use std::path::{Path, PathBuf};

use pocketvlm_engine::load::pytorch::PytorchFile;
use pocketvlm_engine::load::safetensors::{Checkpoint, SafetensorsFile};
use pocketvlm_engine::{Error, Session};
use pocketvlm_tests::{Reference, exact, fixture, max_abs_diff};

/// What malicious.bin's pickle would create (relative to the working directory) if it ran.
const MARKER: &str = "pocketvlm-pickle-ran.marker";

fn pt(name: &str) -> PathBuf {
    fixture("pytorch").join(name)
}

fn expected() -> SafetensorsFile {
    SafetensorsFile::open(&pt("expected.safetensors")).unwrap()
}

fn names_of(it: impl Iterator<Item = impl AsRef<str>>) -> Vec<String> {
    let mut v: Vec<String> = it.map(|s| s.as_ref().to_string()).collect();
    v.sort();
    v
}

fn is_float(dtype: &str) -> bool {
    matches!(dtype, "F32" | "F16" | "BF16")
}

/// Every tensor of `file` equals expected.safetensors: same names, dtypes, shapes, bytes.
fn assert_matches_expected(file: &PytorchFile) {
    let exp = expected();
    assert_eq!(
        names_of(file.names()),
        names_of(exp.names()),
        "{}",
        file.path().display()
    );
    for name in exp.names() {
        let (want, want_bytes) = exp.raw(name).unwrap();
        let got = file.entry(name).unwrap();
        assert_eq!(got.dtype, want.dtype, "{name}");
        assert_eq!(got.shape, want.shape, "{name}");
        let (_, raw) = file.raw(name).unwrap();
        assert_eq!(raw.as_ref(), want_bytes, "{name}: raw bytes");
        if is_float(&want.dtype) {
            let t = file.tensor(name).unwrap();
            assert_eq!(t.shape, want.shape, "{name}");
            assert_eq!(t.bytes(), want_bytes, "{name}: tensor bytes");
            assert_eq!(t.to_f32_vec(), exp.tensor(name).unwrap().to_f32_vec());
        } else {
            assert!(
                matches!(file.tensor(name), Err(Error::UnsupportedDtype { .. })),
                "{name}"
            );
        }
    }
}

#[test]
fn torch_save_files_match_the_safetensors_reference() {
    for name in [
        "single/pytorch_model.bin",
        "protocol4.bin",
        "wrapped.bin",
        "zip64.bin",
    ] {
        let file = PytorchFile::open(&pt(name)).unwrap_or_else(|e| panic!("{e}"));
        assert_matches_expected(&file);
    }
}

#[test]
fn layouts_are_read_from_the_pickle() {
    let f = PytorchFile::open(&pt("single/pytorch_model.bin")).unwrap();
    let l = |n| f.layout(n).unwrap();
    // Contiguous tensors are slices of the memory map, aligned by torch.save.
    for name in [
        "linear.weight",
        "norm.weight",
        "embed.weight",
        "scale",
        "shared.b",
    ] {
        assert!(l(name).contiguous, "{name}");
        assert!(f.tensor(name).unwrap().storage.is_mapped(), "{name}");
    }
    assert_eq!(l("transposed.weight").strides, vec![1, 3]);
    assert!(!l("transposed.weight").contiguous);
    assert!(!f.tensor("transposed.weight").unwrap().storage.is_mapped());
    assert_eq!(
        (
            l("sliced.weight").strides.clone(),
            l("sliced.weight").storage_offset
        ),
        (vec![9, 1], 2)
    );
    // Three views of one storage at different offsets.
    assert_eq!(l("shared.a").storage, l("shared.b").storage);
    assert_eq!(l("shared.b").storage, l("shared.c").storage);
    assert_eq!(
        [
            l("shared.a").storage_offset,
            l("shared.b").storage_offset,
            l("shared.c").storage_offset
        ],
        [0, 10, 20]
    );
    assert_eq!(l("shared.c").strides, vec![2]);
    // The tied tensor is the same object in the pickle: same storage, same bytes.
    assert_eq!(l("tied.weight").storage, l("linear.weight").storage);
    assert_eq!(l("scale").entry.shape, Vec::<usize>::new());
    assert_eq!(f.entry("param").unwrap().shape, vec![4]);
}

#[test]
fn checkpoint_opens_a_single_pytorch_model_bin() {
    let ckpt = Checkpoint::open(&pt("single")).unwrap_or_else(|e| panic!("{e}"));
    let exp = expected();
    assert_eq!(names_of(ckpt.names()), names_of(exp.names()));
    for name in exp
        .names()
        .filter(|n| is_float(&exp.entry(n).unwrap().dtype))
    {
        assert_eq!(
            ckpt.tensor(name).unwrap().bytes(),
            exp.raw(name).unwrap().1,
            "{name}"
        );
        assert!(ckpt.path_of(name).ends_with("single/pytorch_model.bin"));
    }
    assert_eq!(ckpt.entry("position_ids").unwrap().dtype, "I64");
    let shape_err = ckpt.tensor_shaped("linear.weight", &[8, 6]).unwrap_err();
    assert!(
        matches!(shape_err, Error::ShapeMismatch { .. }),
        "{shape_err}"
    );
}

#[test]
fn checkpoint_opens_a_sharded_pytorch_index() {
    let ckpt = Checkpoint::open(&pt("sharded")).unwrap_or_else(|e| panic!("{e}"));
    let exp = expected();
    assert_eq!(names_of(ckpt.names()), names_of(exp.names()));
    for name in exp
        .names()
        .filter(|n| is_float(&exp.entry(n).unwrap().dtype))
    {
        assert_eq!(
            ckpt.tensor(name).unwrap().bytes(),
            exp.raw(name).unwrap().1,
            "{name}"
        );
    }
    assert!(
        ckpt.path_of("linear.weight")
            .ends_with("pytorch_model-00001-of-00002.bin")
    );
    assert!(
        ckpt.path_of("param")
            .ends_with("pytorch_model-00002-of-00002.bin")
    );
}

#[test]
fn checkpoint_prefers_safetensors_over_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        pt("single/pytorch_model.bin"),
        dir.path().join("pytorch_model.bin"),
    )
    .unwrap();
    std::fs::copy(
        pt("expected.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert!(ckpt.path_of("linear.weight").ends_with("model.safetensors"));

    let empty = tempfile::tempdir().unwrap();
    let e = Checkpoint::open(empty.path()).err().unwrap();
    assert!(e.to_string().contains("pytorch_model.bin"), "{e}");
}

fn marker_paths() -> Vec<PathBuf> {
    // Where the payload's relative path would land: the test's working directory (the
    // tests crate) and, for good measure, the fixture directory.
    vec![PathBuf::from(MARKER), pt(MARKER)]
}

#[test]
fn refuses_a_pickle_that_would_run_code() {
    for m in marker_paths() {
        assert!(!m.exists(), "{} exists before the test", m.display());
    }
    let err = PytorchFile::open(&pt("malicious.bin")).err().unwrap();
    match &err {
        Error::UnsafePickle { path, global } => {
            assert!(path.ends_with("malicious.bin"));
            // os.system pickles as posix.system on Unix (nt.system on Windows).
            assert!(global.ends_with(".system"), "{global}");
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("malicious.bin: the pickle calls `")
            && msg.contains(".system`, which is not a tensor constructor; refusing to load it (pickles can run code)"),
        "{msg}"
    );
    // Loaded as a checkpoint directory, the refusal is the same.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pt("malicious.bin"), dir.path().join("pytorch_model.bin")).unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::UnsafePickle { .. })
    ));
    for m in marker_paths().into_iter().chain([dir.path().join(MARKER)]) {
        assert!(!m.exists(), "{} was created: the pickle ran", m.display());
    }
}

fn bad_file_reason(path: &Path) -> String {
    match PytorchFile::open(path) {
        Err(Error::BadModelFile { path: p, reason }) => {
            assert_eq!(p, path);
            reason
        }
        Err(other) => panic!("{}: {other:?}", path.display()),
        Ok(_) => panic!("{} opened", path.display()),
    }
}

#[test]
fn refuses_the_legacy_format() {
    let reason = bad_file_reason(&pt("legacy.bin"));
    assert!(reason.contains("legacy PyTorch format"), "{reason}");
    assert!(reason.contains("re-save"), "{reason}");
}

#[test]
fn refuses_a_truncated_file() {
    let reason = bad_file_reason(&pt("truncated.bin"));
    assert!(reason.contains("truncated"), "{reason}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("pytorch_model.bin");
    std::fs::write(&empty, b"").unwrap();
    let reason = bad_file_reason(&empty);
    assert!(reason.contains("empty"), "{reason}");
}

#[test]
fn every_prefix_and_byte_flip_of_a_real_file_is_handled() {
    let path = pt("single/pytorch_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    for cut in 0..bytes.len() {
        match PytorchFile::from_bytes(&path, &bytes[..cut]) {
            Err(Error::BadModelFile { .. }) => {}
            other => panic!("cut at {cut}: {:?}", other.map(|_| ())),
        }
    }
    // Flipping any byte gives an error or a file whose tensors all read (e.g. a flip in
    // tensor data or padding); never a panic or an out-of-bounds read.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5A;
        if let Ok(f) = PytorchFile::from_bytes(&path, &b) {
            for name in f.names() {
                let _ = f.raw(name);
                let _ = f.tensor(name).map(|t| t.to_f32_vec());
            }
        }
    }
}

/// A minimal `torch.save` writer: the zip layout and protocol-2 pickle torch writes for a
/// state dict, so LLaMA fixtures can be converted without Python (CRCs are left zero: the
/// reader does not check them).
mod torch_save {
    use std::path::Path;

    pub struct Tensor {
        pub name: String,
        pub dtype: String,
        pub shape: Vec<usize>,
        pub strides: Vec<usize>,
        pub storage: Vec<u8>,
    }

    fn storage_class(dtype: &str) -> &'static str {
        match dtype {
            "F32" => "FloatStorage",
            "F16" => "HalfStorage",
            "BF16" => "BFloat16Storage",
            "I64" => "LongStorage",
            other => panic!("no storage class for {other}"),
        }
    }

    fn elem_size(dtype: &str) -> usize {
        match dtype {
            "F32" => 4,
            "F16" | "BF16" => 2,
            _ => 8,
        }
    }

    fn pickle(tensors: &[Tensor]) -> Vec<u8> {
        let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
        let s = |p: &mut Vec<u8>, s: &str| {
            p.push(b'X');
            p.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.extend_from_slice(s.as_bytes());
        };
        let int = |p: &mut Vec<u8>, v: usize| {
            p.push(b'J');
            p.extend_from_slice(&(v as i32).to_le_bytes());
        };
        for (key, t) in tensors.iter().enumerate() {
            s(&mut p, &t.name);
            p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
            s(&mut p, "storage");
            p.extend_from_slice(format!("ctorch\n{}\n", storage_class(&t.dtype)).as_bytes());
            s(&mut p, &key.to_string());
            s(&mut p, "cpu");
            int(&mut p, t.storage.len() / elem_size(&t.dtype));
            p.extend_from_slice(b"tQ");
            int(&mut p, 0);
            for dims in [&t.shape, &t.strides] {
                p.push(b'(');
                for &d in dims {
                    int(&mut p, d);
                }
                p.push(b't');
            }
            p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
        }
        p.extend_from_slice(b"u.");
        p
    }

    pub fn write(path: &Path, tensors: &[Tensor]) {
        let pkl = pickle(tensors);
        let mut entries: Vec<(String, &[u8])> = vec![
            ("archive/data.pkl".into(), &pkl),
            ("archive/byteorder".into(), b"little"),
        ];
        for (key, t) in tensors.iter().enumerate() {
            entries.push((format!("archive/data/{key}"), &t.storage));
        }
        entries.push(("archive/version".into(), b"3\n"));

        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in &entries {
            let header = out.len();
            // Pad the extra field so the data starts on a 64-byte boundary, as torch does.
            let pad = (64 - (header + 30 + name.len() + 4) % 64) % 64;
            let sizes = [
                &0u32.to_le_bytes()[..],
                &(data.len() as u32).to_le_bytes(),
                &(data.len() as u32).to_le_bytes(),
            ]
            .concat();
            out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
            out.extend_from_slice(&sizes);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"FB");
            out.extend_from_slice(&(pad as u16).to_le_bytes());
            out.extend(std::iter::repeat_n(b'Z', pad));
            out.extend_from_slice(data);

            central
                .extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
            central.extend_from_slice(&sizes);
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]);
            central.extend_from_slice(&(header as u32).to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let central_at = out.len();
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&(central_at as u32).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        std::fs::write(path, out).unwrap();
    }
}

/// Converts a safetensors file to a torch.save file. With `transpose`, every matrix is
/// stored as the transpose of its storage (strides `[1, rows]`), so the reader must gather it.
fn convert(src: &Path, dst: &Path, transpose: bool) {
    let file = SafetensorsFile::open(src).unwrap();
    let mut tensors = Vec::new();
    for name in file.names() {
        let (e, bytes) = file.raw(name).unwrap();
        let es = bytes.len() / e.shape.iter().product::<usize>().max(1);
        let (strides, storage) = match e.shape[..] {
            [rows, cols] if transpose => {
                let mut t = vec![0u8; bytes.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        let from = (r * cols + c) * es;
                        let to = (c * rows + r) * es;
                        t[to..to + es].copy_from_slice(&bytes[from..from + es]);
                    }
                }
                (vec![1, rows], t)
            }
            _ => {
                let mut strides = vec![1; e.shape.len()];
                for d in (0..e.shape.len().saturating_sub(1)).rev() {
                    strides[d] = strides[d + 1] * e.shape[d + 1];
                }
                (strides, bytes.to_vec())
            }
        };
        tensors.push(torch_save::Tensor {
            name: name.to_string(),
            dtype: e.dtype.clone(),
            shape: e.shape.clone(),
            strides,
            storage,
        });
    }
    torch_save::write(dst, &tensors);
}

/// A copy of a LLaMA fixture whose weights are pytorch_model*.bin instead of safetensors.
fn as_pytorch_checkpoint(name: &str, transpose: bool) -> tempfile::TempDir {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap().to_str().unwrap().to_string();
        if file_name == "reference.safetensors" {
            continue;
        } else if file_name == "model.safetensors.index.json" {
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text
                .replace("model-", "pytorch_model-")
                .replace(".safetensors", ".bin");
            std::fs::write(dir.path().join("pytorch_model.bin.index.json"), text).unwrap();
        } else if let Some(stem) = file_name.strip_suffix(".safetensors") {
            let out = format!("{}.bin", stem.replace("model", "pytorch_model"));
            convert(&path, &dir.path().join(out), transpose);
        } else {
            std::fs::copy(&path, dir.path().join(&file_name)).unwrap();
        }
    }
    dir
}

#[test]
fn models_load_from_pytorch_checkpoints_with_the_same_logits() {
    // llama_mha: one file, every matrix a transposed view; llama_gqa: sharded, f16.
    for (name, transpose, expect_files) in [
        ("llama_mha", true, &["pytorch_model.bin"][..]),
        (
            "llama_gqa",
            false,
            &[
                "pytorch_model.bin.index.json",
                "pytorch_model-00001-of-00002.bin",
            ][..],
        ),
    ] {
        let dir = as_pytorch_checkpoint(name, transpose);
        for f in expect_files {
            assert!(dir.path().join(f).exists(), "{name}: {f}");
        }
        assert!(!dir.path().join("model.safetensors").exists());
        let reference = Reference::open(&fixture(name));
        let ids = reference.ids("input_ids");
        let (_, expected) = reference.f32("logits");
        let mut session = Session::load(dir.path(), &exact()).unwrap_or_else(|e| panic!("{e}"));
        let got = session.logits(&ids).unwrap();
        let (diff, scale) = max_abs_diff(&got, &expected);
        eprintln!("{name} as pytorch_model.bin: max|Δ| = {diff:.3e}, max|ref| = {scale:.3}");
        assert!(
            diff <= 1e-4 * scale,
            "{name}: max|Δ| {diff} > 1e-4 × {scale}"
        );
    }
}
