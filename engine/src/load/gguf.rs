//! GGUF files (llama.cpp's format): a header of typed key-value metadata and tensor infos,
//! then aligned tensor data, memory-mapped here.
//!
//! Layout (little-endian): `"GGUF"`, `u32 version` (2 or 3), `i64 n_tensors`, `i64 n_kv`;
//! `n_kv` × (string key, `i32` type, value); `n_tensors` × (string name, `u32 n_dims`,
//! `i64 ne[n_dims]` innermost first, `i32 ggml_type`, `u64 offset`); padding to
//! `general.alignment` (default 32); the data, each tensor at `offset` from its start.
//! Strings are `u64 length` + bytes. Every count, length and offset is checked against the
//! file size before it is used: a GGUF file is untrusted input.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::quant::kquants;
use crate::tensor::{DType, HostTensor, Storage};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested arrays deeper than this are refused (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this reader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
    BF16,
    /// A valid ggml type we do not decode (Q5_0, Q2_K, IQ*, ...).
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            6 | 7 | 9..=11 | 13 | 15..=29 | 31..=41 => GgmlType::Other(id),
            _ => return None,
        })
    }

    /// (values per block, bytes per block); `None` for types we cannot size.
    fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, kquants::Q4_K_BYTES as u64),
            GgmlType::Q6K => (256, kquants::Q6_K_BYTES as u64),
            GgmlType::Other(id) => match id {
                6 => (32, 22),    // Q5_0
                7 => (32, 24),    // Q5_1
                9 => (32, 36),    // Q8_1
                10 => (256, 84),  // Q2_K
                11 => (256, 110), // Q3_K
                13 => (256, 176), // Q5_K
                15 => (256, 292), // Q8_K
                _ => return None,
            },
        })
    }

    /// The ggml id, as written in files.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    pub fn from_dtype(d: DType) -> Self {
        match d {
            DType::F32 => GgmlType::F32,
            DType::F16 => GgmlType::F16,
            DType::BF16 => GgmlType::BF16,
            DType::Q4_0 => GgmlType::Q4_0,
            DType::Q4_1 => GgmlType::Q4_1,
            DType::Q8_0 => GgmlType::Q8_0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Dimensions innermost first (ggml's `ne`).
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// Shape outermost first (PyTorch order).
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

pub struct GgufFile {
    path: PathBuf,
    map: Arc<crate::tensor::Map>,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// A bounds-checked little-endian reader over the header bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::bad_file(
            self.path,
            format!("{} (at byte {})", reason.into(), self.pos),
        )
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err(format!(
                "needs {n} more bytes but the file ends after {remaining} (truncated?)"
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N as u64)?.try_into().expect("length checked"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("a string is not valid UTF-8"))
    }

    /// A count that must fit in the rest of the file at `min_bytes` each.
    fn count(&mut self, what: &str, min_bytes: u64) -> Result<u64> {
        let n = self.i64()?;
        let n = u64::try_from(n).map_err(|_| self.err(format!("negative {what} count {n}")))?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes) > remaining {
            return Err(self.err(format!("{what} count {n} is larger than the file allows")));
        }
        Ok(n)
    }

    fn value(&mut self, ty: i32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.i32()?),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem = self.i32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count past the file is a lie.
                let remaining = (self.bytes.len() - self.pos) as u64;
                if n > remaining {
                    return Err(self.err(format!("array of {n} elements is larger than the file")));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.i64()?),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(self.err(format!("unknown metadata value type {other}"))),
        })
    }
}

/// What a GGUF header holds: the version, the metadata and the tensor infos.
pub type Header = (u32, BTreeMap<String, Value>, BTreeMap<String, TensorInfo>);

/// Parses a GGUF header held in `bytes` (the whole file).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut r = Reader {
        bytes,
        pos: 0,
        path,
    };
    if r.take(4)
        .map_err(|_| Error::bad_file(path, "file is too short to be GGUF"))?
        != GGUF_MAGIC
    {
        return Err(Error::bad_file(path, "not a GGUF file (wrong magic)"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Error::bad_file(
            path,
            format!("GGUF version {version} is not supported (2 and 3 are)"),
        ));
    }
    // A tensor info takes at least 8 (name) + 4 + 4 + 8 bytes, a key-value pair 8 + 4 + 1.
    let n_tensors = r.count("tensor", 24)?;
    let n_kv = r.count("metadata", 13)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.i32()?;
        let value = r.value(ty, 0)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v
                .as_u64()
                .ok_or_else(|| Error::bad_file(path, "general.alignment is not an integer"))?;
            if a == 0 || !a.is_power_of_two() {
                return Err(Error::bad_file(
                    path,
                    format!("general.alignment {a} is not a power of two"),
                ));
            }
            a
        }
    };

    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 4 {
            return Err(r.err(format!(
                "tensor `{name}` has {n_dims} dimensions (ggml allows 4)"
            )));
        }
        let ne = (0..n_dims).map(|_| r.i64()).collect::<Result<Vec<_>>>()?;
        let ne = ne
            .iter()
            .map(|&d| {
                u64::try_from(d)
                    .map_err(|_| r.err(format!("tensor `{name}` has a negative dimension")))
            })
            .collect::<Result<Vec<u64>>>()?;
        let ty_id = r.u32()?;
        let ty = GgmlType::from_id(ty_id)
            .ok_or_else(|| r.err(format!("tensor `{name}` has unknown ggml type {ty_id}")))?;
        let offset = r.u64()?;
        infos.push((name, ne, ty, offset));
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;

    let mut tensors = BTreeMap::new();
    for (name, ne, ty, offset) in infos {
        let bad = |reason: String| Error::bad_file(path, format!("tensor `{name}`: {reason}"));
        if offset % alignment != 0 {
            return Err(bad(format!(
                "data offset {offset} is not aligned to {alignment}"
            )));
        }
        let numel = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("dimensions {ne:?} overflow")))?;
        let size = match ty.block() {
            Some((block, bytes_per)) => {
                if ne.first().is_some_and(|&d| d % block != 0) {
                    return Err(bad(format!(
                        "rows of {} values are not whole {ty:?} blocks",
                        ne[0]
                    )));
                }
                (numel / block)
                    .checked_mul(bytes_per)
                    .ok_or_else(|| bad("size overflows".into()))?
            }
            None => 0,
        };
        let start = data_start
            .checked_add(offset)
            .ok_or_else(|| bad("offset overflows".into()))?;
        let end = start
            .checked_add(size)
            .ok_or_else(|| bad("size overflows".into()))?;
        if end > file_len {
            return Err(bad(format!(
                "data [{start}, {end}) runs past the end of the {file_len}-byte file (truncated?)"
            )));
        }
        if tensors.contains_key(&name) {
            return Err(bad("appears twice".into()));
        }
        tensors.insert(
            name,
            TensorInfo {
                ne,
                ty,
                start: start as usize,
                end: end as usize,
            },
        );
    }
    Ok((version, metadata, tensors))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map; as with every mmap loader, the file must not be truncated
        // while it is loaded.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (version, metadata, tensors) = parse(path, &map[..])?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map: Arc::new(crate::tensor::Map::file(map)),
            version,
            metadata,
            tensors,
        })
    }

    /// A GGUF file held in memory (fuzzing, tests); `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let (version, metadata, tensors) = parse(path, bytes)?;
        let mut map =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| Error::io(path, e))?;
        map[..bytes.len()].copy_from_slice(bytes);
        let map = map.make_read_only().map_err(|e| Error::io(path, e))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map: Arc::new(crate::tensor::Map::anon(map)),
            version,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor `name` as the kernels take it: F32/F16/BF16/Q4_0/Q4_1/Q8_0 zero-copy from
    /// the map; Q4_K and Q6_K dequantised and re-stored as Q8_0 (noted in the log).
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let shape = info.shape();
        let storage = || Storage::Mapped {
            map: self.map.clone(),
            offset: info.start,
            len: info.end - info.start,
        };
        let dtype = match info.ty {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::Q4_0 => DType::Q4_0,
            GgmlType::Q4_1 => DType::Q4_1,
            GgmlType::Q8_0 => DType::Q8_0,
            GgmlType::Q4K | GgmlType::Q6K => {
                let bytes = &self.map[info.start..info.end];
                let mut values = vec![0.0f32; shape.iter().product()];
                if info.ty == GgmlType::Q4K {
                    kquants::dequantize_q4_k(bytes, &mut values);
                } else {
                    kquants::dequantize_q6_k(bytes, &mut values);
                }
                log::info!(
                    "{}: `{name}` is {:?}; re-stored as q8_0",
                    self.path.display(),
                    info.ty
                );
                let packed = crate::quant::quantize(DType::Q8_0, &values);
                return Ok(HostTensor::new(
                    DType::Q8_0,
                    shape,
                    Storage::from_bytes(&packed),
                ));
            }
            GgmlType::Other(id) => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("ggml type {id}"),
                });
            }
        };
        Ok(HostTensor::new(dtype, shape, storage()))
    }
}

/// Builds GGUF files (for `pocketvlm quantize --gguf` and tests).
#[derive(Default)]
pub struct Writer {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> i32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            let elem = items.first().map_or(4, value_type);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

impl Writer {
    pub fn metadata(&mut self, key: &str, value: Value) {
        self.metadata.push((key.to_string(), value));
    }

    /// A tensor of PyTorch shape `shape` (outermost first) whose bytes are already in `ty`.
    pub fn tensor(&mut self, name: &str, shape: &[usize], ty: GgmlType, data: Vec<u8>) {
        let ne = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push((name.to_string(), ne, ty, data));
    }

    /// The file bytes (version 3, alignment 32).
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend_from_slice(GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as i64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as i64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_string(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            write_value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, ne, ty, data) in &self.tensors {
            write_string(&mut out, name);
            out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend_from_slice(&(*d as i64).to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += data.len().div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::default();
        w.metadata("general.architecture", Value::String("llama".into()));
        w.metadata("llama.block_count", Value::U32(2));
        w.metadata(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        );
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        w.tensor("t", &[2, 3], GgmlType::F32, data);
        w.tensor("q", &[1, 32], GgmlType::Q8_0, vec![0u8; 34]);
        w.to_bytes()
    }

    fn parse_bytes(b: &[u8]) -> Result<Header> {
        parse(Path::new("x.gguf"), b)
    }

    #[test]
    fn round_trips_the_writer() {
        let bytes = sample();
        let (v, meta, tensors) = parse_bytes(&bytes).unwrap();
        assert_eq!(v, 3);
        assert_eq!(meta["llama.block_count"].as_u64(), Some(2));
        assert_eq!(meta["tokenizer.ggml.tokens"].as_array().unwrap().len(), 2);
        let t = &tensors["t"];
        assert_eq!(t.shape(), vec![2, 3]);
        assert_eq!(&bytes[t.start..t.start + 4], &1.0f32.to_le_bytes());
        assert_eq!(t.start % 32, 0);
    }

    fn expect_bad(bytes: &[u8], what: &str) {
        match parse_bytes(bytes) {
            Err(Error::BadModelFile { .. }) => {}
            other => panic!("{what}: expected BadModelFile, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn every_malformation_is_a_typed_error() {
        let good = sample();
        expect_bad(b"GGU", "too short");
        let mut b = good.clone();
        b[0] = b'X';
        expect_bad(&b, "wrong magic");
        let mut b = good.clone();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        expect_bad(&b, "version 1");
        // Truncated anywhere in the header or data.
        let last_data_end = parse_bytes(&good).unwrap().2["q"].end;
        for cut in [10, 30, 60, 100, good.len() - 40, last_data_end - 1] {
            expect_bad(&good[..cut], &format!("truncated at {cut}"));
        }
        // Counts larger than the file.
        let mut b = good.clone();
        b[8..16].copy_from_slice(&(1i64 << 40).to_le_bytes());
        expect_bad(&b, "tensor count");
        let mut b = good.clone();
        b[16..24].copy_from_slice(&(-1i64).to_le_bytes());
        expect_bad(&b, "negative kv count");
        // Unknown ggml type and misaligned offset, found by scanning for the tensor info.
        let name_at = find(&good, b"\x01\x00\x00\x00\x00\x00\x00\x00t");
        // After the name: n_dims (4), ne (2 × 8), type (4), offset (8).
        let ty_at = name_at + 9 + 4 + 16;
        let mut b = good.clone();
        b[ty_at..ty_at + 4].copy_from_slice(&999u32.to_le_bytes());
        expect_bad(&b, "unknown type");
        let mut b = good.clone();
        b[ty_at + 4..ty_at + 12].copy_from_slice(&3u64.to_le_bytes());
        expect_bad(&b, "misaligned offset");
        let mut b = good.clone();
        b[ty_at + 4..ty_at + 12].copy_from_slice(&(1u64 << 20).to_le_bytes());
        expect_bad(&b, "data past the end");
    }

    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len())
            .position(|w| w == needle)
            .expect("needle")
    }
}
