//! safetensors files (memory-mapped, header bounds-checked) and Hugging Face checkpoint
//! directories (one `model.safetensors`, or shards listed by `model.safetensors.index.json`).
//!
//! Format: `u64 LE header length N`, `N bytes of JSON` mapping each tensor name to
//! `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the byte after the
//! header), then the data. Nothing in a file is trusted: every length and offset is checked
//! against the file size before any byte is read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::load::pytorch::PytorchFile;
use crate::tensor::{DType, HostTensor, Storage};

/// Headers larger than this are refused (real ones are well under 10 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Where one tensor lives in a safetensors file.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// The dtype string as written in the header (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// One memory-mapped safetensors file with a validated header.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<crate::tensor::Map>,
    tensors: BTreeMap<String, TensorEntry>,
    metadata: BTreeMap<String, String>,
}

fn element_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

fn float_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        // Block formats, as `apply_quant_metadata` renames them.
        "Q4_0" => DType::Q4_0,
        "Q4_1" => DType::Q4_1,
        "Q8_0" => DType::Q8_0,
        _ => return None,
    })
}

/// The `__metadata__` key of PocketVLM's quantised safetensors: a JSON object mapping each
/// quantised tensor to `{"dtype": "q4_0", "shape": [rows, cols]}`. The tensor itself is
/// stored as `U8` with shape `[rows, bytes per row]`: the rows of ggml blocks, unchanged.
pub const QUANT_METADATA_KEY: &str = "pocketvlm.quant";

/// Turns the `U8` entries that the quantisation metadata describes into block-format
/// entries with their logical shapes, checking that sizes agree.
fn apply_quant_metadata(
    path: &Path,
    tensors: &mut BTreeMap<String, TensorEntry>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let Some(text) = metadata.get(QUANT_METADATA_KEY) else {
        return Ok(());
    };
    let bad = |reason: String| Error::bad_file(path, reason);
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "`{QUANT_METADATA_KEY}` metadata is not valid JSON: {e}"
        ))
    })?;
    let map = json
        .as_object()
        .ok_or_else(|| bad(format!("`{QUANT_METADATA_KEY}` metadata is not an object")))?;
    for (name, info) in map {
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .and_then(DType::parse)
            .filter(|d| d.is_quantized())
            .ok_or_else(|| bad(format!("`{name}`: bad quantised dtype {info}")))?;
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .filter(|s| s.len() == 2)
            .ok_or_else(|| bad(format!("`{name}`: bad quantised shape {info}")))?;
        let entry = tensors.get_mut(name).ok_or_else(|| {
            bad(format!(
                "quantisation metadata names `{name}`, which the file lacks"
            ))
        })?;
        let bytes = shape[0]
            .checked_mul(shape[1])
            .and_then(|n| dtype.bytes_for(n))
            .ok_or_else(|| bad(format!("`{name}`: {shape:?} is not whole {dtype} blocks")))?;
        if entry.dtype != "U8" || entry.end - entry.start != bytes {
            return Err(bad(format!(
                "`{name}`: {dtype} {shape:?} needs {bytes} bytes of U8, the file has {} of {}",
                entry.end - entry.start,
                entry.dtype
            )));
        }
        entry.dtype = dtype.to_string().to_uppercase();
        entry.shape = shape;
    }
    Ok(())
}

/// Writes tensors as a safetensors file (keys sorted, header padded to 8 bytes), via a
/// temporary file renamed into place. Block-format tensors are written as described at
/// [`QUANT_METADATA_KEY`].
pub fn write_safetensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    // f32 tensors first: the data has no padding between tensors, so this keeps every
    // tensor aligned for its dtype and the file usable in place (memory-mapped).
    let mut sorted: Vec<&(String, HostTensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| (b.1.dtype.align(), &a.0).cmp(&(a.1.dtype.align(), &b.0)));
    let mut quant = serde_json::Map::new();
    let mut header = serde_json::Map::new();
    let mut entries = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in &sorted {
        let len = t.bytes().len();
        let (dtype, shape) = match t.dtype {
            DType::F32 => ("F32", t.shape.clone()),
            DType::F16 => ("F16", t.shape.clone()),
            DType::BF16 => ("BF16", t.shape.clone()),
            q => {
                let (rows, cols) = t.rows_cols();
                quant.insert(
                    name.clone(),
                    serde_json::json!({"dtype": q.to_string(), "shape": [rows, cols]}),
                );
                ("U8", vec![rows, t.row_bytes()])
            }
        };
        entries.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    if !quant.is_empty() {
        meta.insert(
            QUANT_METADATA_KEY.into(),
            serde_json::Value::String(serde_json::Value::Object(quant).to_string()),
        );
    }
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    header.extend(entries);
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');

    let tmp = path.with_extension("safetensors.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        f.write_all(&(json.len() as u64).to_le_bytes())?;
        f.write_all(&json)?;
        for (_, t) in &sorted {
            f.write_all(t.bytes())?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io(path, e))
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not
        // being truncated by another process while it is loaded.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::from_map(path, Arc::new(crate::tensor::Map::file(map)))
    }

    /// A safetensors file held in memory (fuzzing, tests); `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut map =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| Error::io(path, e))?;
        map[..bytes.len()].copy_from_slice(bytes);
        let map = map.make_read_only().map_err(|e| Error::io(path, e))?;
        // The anonymous map may be longer than the data: parse only the data's bytes.
        let (mut tensors, metadata) = parse_header(path, &map[..bytes.len()])?;
        apply_quant_metadata(path, &mut tensors, &metadata)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map: Arc::new(crate::tensor::Map::anon(map)),
            tensors,
            metadata,
        })
    }

    fn from_map(path: &Path, map: Arc<crate::tensor::Map>) -> Result<Self> {
        let (mut tensors, metadata) = parse_header(path, &map)?;
        apply_quant_metadata(path, &mut tensors, &metadata)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The raw bytes of a tensor of any dtype (used for integer inputs in test references).
    pub fn raw(&self, name: &str) -> Result<(&TensorEntry, &[u8])> {
        let e = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        Ok((e, &self.map[e.start..e.end]))
    }

    /// A floating-point tensor, zero-copy when its bytes are aligned.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let (e, _) = self.raw(name)?;
        let dtype = float_dtype(&e.dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: e.dtype.clone(),
        })?;
        let storage = Storage::Mapped {
            map: self.map.clone(),
            offset: e.start,
            len: e.end - e.start,
        };
        Ok(HostTensor::new(dtype, e.shape.clone(), storage))
    }
}

type Header = (BTreeMap<String, TensorEntry>, BTreeMap<String, String>);

/// Parses and validates the header of a safetensors file held in `bytes`.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let bad = |reason: String| Error::bad_file(path, reason);
    if bytes.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        )));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let available = bytes.len() as u64 - 8;
    if header_len > available || header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {header_len} exceeds the {available} bytes after it (truncated or not a safetensors file)"
        )));
    }
    let data_start = 8 + header_len as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;

    let data_len = bytes.len() - data_start;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            if let Some(m) = info.as_object() {
                for (k, v) in m {
                    metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let field = |key: &str| {
            info.get(key)
                .ok_or_else(|| bad(format!("tensor `{name}`: missing `{key}`")))
        };
        let dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(format!("tensor `{name}`: dtype is not a string")))?
            .to_string();
        let elem = element_size(&dtype)
            .ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype `{dtype}`")))?;
        let shape = field("shape")?
            .as_array()
            .ok_or_else(|| bad(format!("tensor `{name}`: shape is not an array")))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad(format!("tensor `{name}`: shape has a non-integer entry")))?;
        let offsets = field("data_offsets")?
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| bad(format!("tensor `{name}`: data_offsets is not [begin, end]")))?;
        let (begin, end) = offsets;
        if begin > end || end > data_len as u64 {
            return Err(bad(format!(
                "tensor `{name}`: data [{begin}, {end}) lies outside the {data_len} data bytes (truncated file?)"
            )));
        }
        let expected = shape
            .iter()
            .try_fold(elem, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if expected as u64 != end - begin {
            return Err(bad(format!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {expected} bytes but the header gives {}",
                end - begin
            )));
        }
        tensors.insert(
            name.clone(),
            TensorEntry {
                dtype,
                shape,
                start: data_start + begin as usize,
                end: data_start + end as usize,
            },
        );
    }
    Ok((tensors, metadata))
}

/// One weight file of a checkpoint, in either format.
enum WeightFile {
    Safetensors(SafetensorsFile),
    /// `pytorch_model*.bin` (torch.save), read without running its pickle.
    Pytorch(PytorchFile),
}

impl WeightFile {
    fn open(path: &Path, format: Format) -> Result<Self> {
        Ok(match format {
            Format::Safetensors => WeightFile::Safetensors(SafetensorsFile::open(path)?),
            Format::Pytorch => WeightFile::Pytorch(PytorchFile::open(path)?),
        })
    }

    fn path(&self) -> &Path {
        match self {
            WeightFile::Safetensors(f) => f.path(),
            WeightFile::Pytorch(f) => f.path(),
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            WeightFile::Safetensors(f) => f.names().map(str::to_string).collect(),
            WeightFile::Pytorch(f) => f.names().map(str::to_string).collect(),
        }
    }

    fn entry(&self, name: &str) -> Option<&TensorEntry> {
        match self {
            WeightFile::Safetensors(f) => f.entry(name),
            WeightFile::Pytorch(f) => f.entry(name),
        }
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        match self {
            WeightFile::Safetensors(f) => f.tensor(name),
            WeightFile::Pytorch(f) => f.tensor(name),
        }
    }

    fn total_bytes(&self) -> usize {
        match self {
            WeightFile::Safetensors(f) => f.tensors.values().map(|e| e.end - e.start).sum(),
            WeightFile::Pytorch(f) => f.total_bytes(),
        }
    }
}

#[derive(Clone, Copy)]
enum Format {
    Safetensors,
    Pytorch,
}

/// The weights of a Hugging Face checkpoint directory: one file or an indexed set of shards,
/// as safetensors (preferred when both are present) or as PyTorch `pytorch_model.bin`.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<WeightFile>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        // In order of preference: safetensors needs no pickle at all, so a directory that
        // ships both formats (many Hugging Face repos do) is read from its safetensors.
        let candidates = [
            ("model.safetensors.index.json", true, Format::Safetensors),
            ("model.safetensors", false, Format::Safetensors),
            ("pytorch_model.bin.index.json", true, Format::Pytorch),
            ("pytorch_model.bin", false, Format::Pytorch),
        ];
        for (name, is_index, format) in candidates {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            if is_index {
                return Self::open_sharded(dir, &path, format);
            }
            let file = WeightFile::open(&path, format)?;
            let index = file.names().into_iter().map(|n| (n, 0)).collect();
            return Ok(Checkpoint {
                dir: dir.to_path_buf(),
                files: vec![file],
                index,
            });
        }
        Err(Error::bad_file(
            dir,
            "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or \
             pytorch_model.bin.index.json in this directory",
        ))
    }

    fn open_sharded(dir: &Path, index_path: &Path, format: Format) -> Result<Self> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(index_path, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_file(index_path, "no `weight_map` object"))?;
        let mut shard_of_name: BTreeMap<&str, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                Error::bad_file(index_path, format!("`{tensor}` maps to a non-string"))
            })?;
            // Shard names must be plain file names inside the checkpoint directory.
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(Error::bad_file(
                    index_path,
                    format!("shard name `{shard}` is not a file in this directory"),
                ));
            }
            let i = match shard_of_name.get(shard) {
                Some(&i) => i,
                None => {
                    files.push(WeightFile::open(&dir.join(shard), format)?);
                    shard_of_name.insert(shard, files.len() - 1);
                    files.len() - 1
                }
            };
            if files[i].entry(tensor).is_none() {
                return Err(Error::bad_file(
                    index_path,
                    format!("index says `{tensor}` is in {shard}, but that shard lacks it"),
                ));
            }
            index.insert(tensor.clone(), i);
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The file that holds `name` (for error messages), or the directory.
    pub fn path_of(&self, name: &str) -> &Path {
        match self.index.get(name) {
            Some(&i) => self.files[i].path(),
            None => &self.dir,
        }
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.index
            .get(name)
            .and_then(|&i| self.files[i].entry(name))
    }

    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        match self.index.get(name) {
            Some(&i) => self.files[i].tensor(name),
            None => Err(Error::MissingTensor {
                path: self.dir.clone(),
                name: name.to_string(),
            }),
        }
    }

    /// A tensor whose shape must be exactly `expected`.
    pub fn tensor_shaped(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        // Checked before reading: a strided PyTorch tensor is copied when it is read.
        if let Some(e) = self.entry(name)
            && e.shape != expected
        {
            return Err(Error::ShapeMismatch {
                path: self.path_of(name).to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: e.shape.clone(),
            });
        }
        self.tensor(name)
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> usize {
        self.files.iter().map(WeightFile::total_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_file(json: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn parse(bytes: &[u8]) -> Result<Header> {
        parse_header(Path::new("t.safetensors"), bytes)
    }

    #[test]
    fn parses_a_valid_header() {
        let f = header_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#,
            &[0; 8],
        );
        let (t, m) = parse(&f).unwrap();
        assert_eq!(t["a"].shape, vec![2]);
        assert_eq!(m["format"], "pt");
    }

    #[test]
    fn refuses_lying_and_truncated_headers() {
        let cases: Vec<Vec<u8>> = vec![
            vec![1, 2, 3],
            {
                let mut v = header_file("{}", &[]);
                v[0] = 200;
                v
            },
            header_file(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                &[0; 8],
            ),
            header_file(
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
            header_file(
                r#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
            header_file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                &[0; 8],
            ),
            header_file(
                r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
            header_file("not json", &[]),
            header_file("[1,2]", &[]),
        ];
        for (i, c) in cases.iter().enumerate() {
            match parse(c) {
                Err(Error::BadModelFile { .. }) => {}
                other => panic!(
                    "case {i}: expected BadModelFile, got {:?}",
                    other.map(|_| ())
                ),
            }
        }
    }
}
