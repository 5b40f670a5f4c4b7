//! PyTorch checkpoints written by `torch.save` (`pytorch_model.bin`), read without Python and
//! without running the pickle inside them.
//!
//! Since PyTorch 1.6 such a file is a ZIP archive under one top-level folder: `data.pkl`, a
//! pickle of the state dict in which each tensor is a call of
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and each storage a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)`, plus the raw
//! storages as stored (uncompressed, 64-byte aligned) entries `data/<key>`. [`zip`] reads
//! the archive, [`pickle`] evaluates the pickle symbolically against an allowlist, and this
//! module checks each tensor's strided view against its storage and serves its bytes: a
//! slice of the memory map when contiguous (zero-copy), a gathered copy otherwise.
//!
//! Nothing in the file is trusted. A pickle that names anything but the tensor-rebuilding
//! callables is refused ([`Error::UnsafePickle`]), and every offset, size and stride is
//! checked against the storage and the file before a byte is read.

mod pickle;
mod zip;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::load::safetensors::TensorEntry;
use crate::tensor::{DType, HostTensor, Storage};
use pickle::{PickleError, TensorRef, TorchDtype};
use zip::ZipArchive;

/// data.pkl larger than this is refused: a real one holds about 150 bytes per tensor (a 7B
/// model's is ~50 KB), and the reader's memory grows with the pickle's length.
const MAX_PICKLE_BYTES: usize = 32 << 20;

/// A strided view copied to a contiguous buffer may grow beyond its storage (a stride of 0
/// repeats elements). Copies are allowed up to the file's size or this much, whichever is
/// larger, so a small hostile file cannot demand terabytes.
const MIN_COPY_LIMIT: usize = 256 << 20;

const LEGACY: &str = "legacy PyTorch format (torch.save before PyTorch 1.6, or with \
                      _use_new_zipfile_serialization=False) is not supported; re-save it with \
                      a current torch.save or convert it to safetensors";

/// Where one tensor of a torch.save archive lives.
#[derive(Clone, Debug)]
pub struct TensorLayout {
    /// dtype (spelled as in safetensors: `F32`, `BF16`, `I64`, ...), shape, and the range of
    /// file bytes the tensor's elements lie in: exactly its bytes when `contiguous`.
    pub entry: TensorEntry,
    /// PyTorch strides, in elements.
    pub strides: Vec<usize>,
    /// Offset of the first element within the storage, in elements.
    pub storage_offset: usize,
    /// The archive entry of the storage (`<folder>/data/<key>`).
    pub storage: String,
    /// Row-major with no gaps, so the bytes can be used in place.
    pub contiguous: bool,
    dtype: TorchDtype,
    /// The storage's bytes in the file.
    storage_range: Range<usize>,
}

/// One memory-mapped `torch.save` archive with a validated state dict.
pub struct PytorchFile {
    path: PathBuf,
    map: Arc<crate::tensor::Map>,
    tensors: BTreeMap<String, TensorLayout>,
}

impl PytorchFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not
        // being truncated by another process while it is loaded.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let tensors = parse_archive(path, &map)?;
        Ok(PytorchFile {
            path: path.to_path_buf(),
            map: Arc::new(crate::tensor::Map::file(map)),
            tensors,
        })
    }

    /// Reads an archive held in memory (for fuzzing and tests); `path` only names it in
    /// errors. The bytes are copied to an anonymous map so tensors can share it like a file's.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let tensors = parse_archive(path, bytes)?;
        let mut map = memmap2::MmapMut::map_anon(bytes.len()).map_err(|e| Error::io(path, e))?;
        map.copy_from_slice(bytes);
        let map = map.make_read_only().map_err(|e| Error::io(path, e))?;
        Ok(PytorchFile {
            path: path.to_path_buf(),
            map: Arc::new(crate::tensor::Map::anon(map)),
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name).map(|t| &t.entry)
    }

    /// Strides, storage and offset of a tensor.
    pub fn layout(&self, name: &str) -> Option<&TensorLayout> {
        self.tensors.get(name)
    }

    /// Bytes of all tensors once contiguous.
    pub fn total_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|t| numel(&t.entry.shape).saturating_mul(t.dtype.size()))
            .fold(0, usize::saturating_add)
    }

    fn layout_of(&self, name: &str) -> Result<&TensorLayout> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// The bytes of a tensor of any dtype, row-major (used for integer tensors in tests):
    /// borrowed from the map when contiguous, copied otherwise.
    pub fn raw(&self, name: &str) -> Result<(&TensorEntry, Cow<'_, [u8]>)> {
        let t = self.layout_of(name)?;
        if t.contiguous {
            return Ok((
                &t.entry,
                Cow::Borrowed(&self.map[t.entry.start..t.entry.end]),
            ));
        }
        let len = self.copy_len(name, t)?;
        let mut out = Vec::new();
        out.try_reserve_exact(len)
            .map_err(|_| self.alloc_error(name, len))?;
        out.resize(len, 0);
        self.gather(name, t, &mut out)?;
        Ok((&t.entry, Cow::Owned(out)))
    }

    /// A floating-point tensor: zero-copy from the map when contiguous and aligned, else
    /// copied to an aligned contiguous buffer.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let t = self.layout_of(name)?;
        let dtype = match t.dtype {
            TorchDtype::F32 => DType::F32,
            TorchDtype::F16 => DType::F16,
            TorchDtype::BF16 => DType::BF16,
            _ => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: t.entry.dtype.clone(),
                });
            }
        };
        let storage = if t.contiguous {
            Storage::Mapped {
                map: self.map.clone(),
                offset: t.entry.start,
                len: t.entry.end - t.entry.start,
            }
        } else {
            let len = self.copy_len(name, t)?;
            // u64 words keep the buffer aligned for every dtype (see `Storage::Owned`).
            let mut words: Vec<u64> = Vec::new();
            words
                .try_reserve_exact(len.div_ceil(8))
                .map_err(|_| self.alloc_error(name, len))?;
            words.resize(len.div_ceil(8), 0);
            self.gather(
                name,
                t,
                &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len],
            )?;
            Storage::Owned {
                words: Arc::new(words),
                offset: 0,
                len,
            }
        };
        Ok(HostTensor::new(dtype, t.entry.shape.clone(), storage))
    }

    /// Bytes of a contiguous copy of `t`, refused when a strided view would expand far
    /// beyond the file.
    fn copy_len(&self, name: &str, t: &TensorLayout) -> Result<usize> {
        let limit = self.map.len().max(MIN_COPY_LIMIT);
        numel(&t.entry.shape)
            .checked_mul(t.dtype.size())
            .filter(|&n| n <= limit)
            .ok_or_else(|| {
                Error::bad_file(
                    &self.path,
                    format!(
                        "tensor `{name}`: its strided view of shape {:?} would expand to more \
                         than {limit} bytes; re-save it with .contiguous()",
                        t.entry.shape
                    ),
                )
            })
    }

    fn alloc_error(&self, name: &str, len: usize) -> Error {
        Error::bad_file(
            &self.path,
            format!("tensor `{name}`: cannot allocate {len} bytes for a contiguous copy"),
        )
    }

    /// Copies the elements of a strided view, row-major, into `out` (numel × size bytes).
    fn gather(&self, name: &str, t: &TensorLayout, out: &mut [u8]) -> Result<()> {
        let oob = || {
            Error::bad_file(
                &self.path,
                format!("tensor `{name}`: an element lies outside its storage"),
            )
        };
        let src = self.map.get(t.storage_range.clone()).ok_or_else(oob)?;
        let es = t.dtype.size();
        let shape = &t.entry.shape;
        if numel(shape) == 0 {
            return Ok(());
        }
        let Some((&inner, outer)) = shape.split_last() else {
            // 0-D: one element.
            let from = t.storage_offset * es;
            out.copy_from_slice(src.get(from..from + es).ok_or_else(oob)?);
            return Ok(());
        };
        let inner_stride = t.strides[shape.len() - 1];
        let mut idx = vec![0usize; outer.len()];
        let mut at = 0;
        loop {
            // Offsets were checked against the storage when the file was opened, so these
            // sums cannot overflow; `get` still guards every read.
            let base = t.storage_offset
                + idx
                    .iter()
                    .zip(&t.strides)
                    .map(|(&i, &s)| i * s)
                    .sum::<usize>();
            if inner_stride == 1 {
                let n = inner * es;
                let from = base * es;
                out[at..at + n].copy_from_slice(src.get(from..from + n).ok_or_else(oob)?);
                at += n;
            } else {
                for i in 0..inner {
                    let from = (base + i * inner_stride) * es;
                    out[at..at + es].copy_from_slice(src.get(from..from + es).ok_or_else(oob)?);
                    at += es;
                }
            }
            // Advance the multi-index over the outer dimensions, last fastest.
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return Ok(());
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < outer[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Reads the archive in `bytes` and validates every tensor of its state dict.
fn parse_archive(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, TensorLayout>> {
    let bad = |reason: String| Error::bad_file(path, reason);
    if !bytes.starts_with(b"PK\x03\x04") {
        return Err(bad(if bytes.first() == Some(&0x80) {
            // The legacy format is a sequence of pickles, the first starting with PROTO.
            LEGACY.to_string()
        } else if bytes.len() < 4 {
            format!("file is {} bytes: empty or truncated", bytes.len())
        } else {
            "not a PyTorch checkpoint: no zip header (expected a file written by torch.save)"
                .to_string()
        }));
    }
    let zip = ZipArchive::parse(bytes).map_err(bad)?;

    // Everything lies under one folder (torch names it after the file, or `archive`), with
    // the pickle at `<folder>/data.pkl`.
    let mut pickles = zip
        .entries()
        .iter()
        .filter(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1);
    let pkl = pickles.next().ok_or_else(|| {
        bad("the archive has no `<folder>/data.pkl`: not a torch.save file".into())
    })?;
    if let Some(other) = pickles.next() {
        return Err(bad(format!(
            "the archive has two pickles, `{}` and `{}`",
            pkl.name, other.name
        )));
    }
    let folder = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    if let Some(e) = zip.entries().iter().find(|e| !e.name.starts_with(folder)) {
        return Err(bad(format!(
            "entry `{}` lies outside the archive folder `{folder}`",
            e.name
        )));
    }
    if zip.find(&format!("{folder}constants.pkl")).is_some() {
        return Err(bad(
            "this is a TorchScript archive (torch.jit.save), not a state dict saved with \
             torch.save"
                .into(),
        ));
    }
    if let Some(e) = zip.find(&format!("{folder}byteorder")) {
        let order = &bytes[zip.data_range(bytes, e).map_err(bad)?];
        if order != b"little" {
            return Err(bad(format!(
                "storages are `{}`-endian; only little-endian checkpoints are supported",
                String::from_utf8_lossy(order)
            )));
        }
    }

    if pkl.size > MAX_PICKLE_BYTES as u64 {
        return Err(bad(format!(
            "data.pkl is {} bytes, more than the {MAX_PICKLE_BYTES} a state dict needs",
            pkl.size
        )));
    }
    let pickle = &bytes[zip.data_range(bytes, pkl).map_err(bad)?];
    let state = pickle::read_state_dict(pickle).map_err(|e| match e {
        PickleError::Refused(global) => Error::UnsafePickle {
            path: path.to_path_buf(),
            global,
        },
        PickleError::Bad(reason) => bad(format!("data.pkl: {reason}")),
    })?;

    let mut storages: HashMap<&str, Range<usize>> = HashMap::new();
    let mut tensors = BTreeMap::new();
    for (name, t) in &state {
        let entry_name = format!("{folder}data/{}", t.storage.key);
        let range = match storages.get(t.storage.key.as_str()) {
            Some(r) => r.clone(),
            None => {
                let e = zip.find(&entry_name).ok_or_else(|| {
                    bad(format!(
                        "tensor `{name}`: its storage `{entry_name}` is not in the archive"
                    ))
                })?;
                let r = zip.data_range(bytes, e).map_err(bad)?;
                storages.insert(&t.storage.key, r.clone());
                r
            }
        };
        let layout =
            layout(t, entry_name, range).map_err(|r| bad(format!("tensor `{name}`: {r}")))?;
        // A name stored twice: the later value wins, as in the Python dict.
        tensors.insert(name.clone(), layout);
    }
    Ok(tensors)
}

/// Checks a tensor's view against its storage (`range`, bytes in the file).
fn layout(
    t: &TensorRef,
    storage: String,
    range: Range<usize>,
) -> std::result::Result<TensorLayout, String> {
    let too_big = || "its size or strides overflow".to_string();
    let size_of_storage_elem = t.storage.dtype.map_or(1, TorchDtype::size) as u64;
    let storage_bytes = t
        .storage
        .numel
        .checked_mul(size_of_storage_elem)
        .ok_or_else(too_big)?;
    if storage_bytes > range.len() as u64 {
        return Err(format!(
            "its storage `{storage}` should hold {storage_bytes} bytes but has {} (truncated?)",
            range.len()
        ));
    }
    // The storage fits in the file, so its size fits in usize, and so does any index
    // checked to be below its element count.
    let es = t.dtype.size();
    let storage_elems = storage_bytes as usize / es;
    let to_usize = |v: &[u64]| {
        v.iter()
            .map(|&d| usize::try_from(d).map_err(|_| too_big()))
            .collect::<std::result::Result<Vec<usize>, String>>()
    };
    let shape = to_usize(&t.shape)?;
    let strides = to_usize(&t.strides)?;
    let offset = usize::try_from(t.offset).map_err(|_| too_big())?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(too_big)?;

    let (start, end) = if count == 0 {
        (range.start, range.start)
    } else {
        // The furthest element: offset + Σ (size − 1) × stride.
        let last = shape
            .iter()
            .zip(&strides)
            .try_fold(offset, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            })
            .ok_or_else(too_big)?;
        if last >= storage_elems {
            return Err(format!(
                "shape {shape:?} with strides {strides:?} at offset {offset} reaches element \
                 {last}, outside its storage of {storage_elems} elements"
            ));
        }
        (range.start + offset * es, range.start + (last + 1) * es)
    };
    // Row-major without gaps; the stride of a dimension of size 1 does not matter.
    let mut expected = 1usize;
    let mut contiguous = true;
    for (&d, &s) in shape.iter().zip(&strides).rev() {
        if d != 1 && s != expected {
            contiguous = false;
        }
        expected = expected.saturating_mul(d);
    }
    contiguous |= count == 0;
    Ok(TensorLayout {
        entry: TensorEntry {
            dtype: t.dtype.safetensors_name().to_string(),
            shape,
            start,
            end,
        },
        strides,
        storage_offset: offset,
        storage,
        contiguous,
        dtype: t.dtype,
        storage_range: range,
    })
}

#[cfg(test)]
mod tests {
    use super::pickle::tests::P;
    use super::zip::tests::build_zip;
    use super::*;

    fn path() -> &'static Path {
        Path::new("pytorch_model.bin")
    }

    fn archive(pkl: &P, storages: &[(&str, &[u8])]) -> Vec<u8> {
        let names: Vec<String> = storages
            .iter()
            .map(|(k, _)| format!("archive/data/{k}"))
            .collect();
        let mut entries: Vec<(&str, &[u8], u16)> = vec![
            ("archive/data.pkl", &pkl.0, 0),
            ("archive/byteorder", b"little", 0),
        ];
        for (n, (_, data)) in names.iter().zip(storages) {
            entries.push((n, data, 0));
        }
        build_zip(&entries, false)
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn open(bytes: &[u8]) -> Result<PytorchFile> {
        PytorchFile::from_bytes(path(), bytes)
    }

    #[test]
    fn strided_views_are_gathered() {
        let data = f32_bytes(&(0..12).map(|x| x as f32).collect::<Vec<_>>());
        let pkl = P::new()
            .op(b"}(")
            .str("t")
            .tensor("FloatStorage", "0", 12, 1, &[3, 2], &[1, 3]) // transposed, offset 1
            .str("c")
            .tensor("FloatStorage", "0", 12, 4, &[2, 3], &[3, 1]) // contiguous at offset 4
            .str("e")
            .tensor("FloatStorage", "0", 12, 2, &[2, 3], &[0, 1]) // broadcast rows
            .str("s")
            .tensor("FloatStorage", "0", 12, 11, &[], &[]) // 0-D, last element
            .str("z")
            .tensor("FloatStorage", "0", 12, 99, &[0, 4], &[4, 1]) // empty
            .op(b"u.");
        let f = open(&archive(&pkl, &[("0", &data)])).unwrap();
        let t = f.tensor("t").unwrap();
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(t.to_f32_vec(), vec![1., 4., 2., 5., 3., 6.]);
        assert!(!t.storage.is_mapped());
        let c = f.tensor("c").unwrap();
        assert!(
            c.storage.is_mapped(),
            "contiguous with an offset stays zero-copy"
        );
        assert_eq!(c.to_f32_vec(), vec![4., 5., 6., 7., 8., 9.]);
        assert_eq!(
            f.tensor("e").unwrap().to_f32_vec(),
            vec![2., 3., 4., 2., 3., 4.]
        );
        assert_eq!(f.tensor("s").unwrap().to_f32_vec(), vec![11.]);
        assert_eq!(f.tensor("z").unwrap().numel(), 0);
        let (e, raw) = f.raw("t").unwrap();
        assert_eq!(e.dtype, "F32");
        assert_eq!(raw.as_ref(), &f32_bytes(&[1., 4., 2., 5., 3., 6.])[..]);
        assert!(matches!(f.raw("c").unwrap().1, Cow::Borrowed(_)));
        assert!(matches!(f.tensor("nope"), Err(Error::MissingTensor { .. })));
    }

    #[test]
    fn integer_tensors_are_raw_only() {
        let data: Vec<u8> = [5i64, -6].iter().flat_map(|x| x.to_le_bytes()).collect();
        let pkl = P::new()
            .op(b"}")
            .str("ids")
            .tensor("LongStorage", "k", 2, 0, &[2], &[1])
            .op(b"s.");
        let f = open(&archive(&pkl, &[("k", &data)])).unwrap();
        assert!(matches!(
            f.tensor("ids"),
            Err(Error::UnsupportedDtype { dtype, .. }) if dtype == "I64"
        ));
        let (e, raw) = f.raw("ids").unwrap();
        assert_eq!((e.dtype.as_str(), e.shape.clone()), ("I64", vec![2]));
        assert_eq!(raw.as_ref(), &data[..]);
    }

    #[test]
    fn views_outside_their_storage_are_refused() {
        let data = f32_bytes(&[0.0; 4]);
        // (storage class, storage numel, offset, shape, strides)
        type Case<'a> = (&'a str, u32, u32, &'a [u32], &'a [u32]);
        let cases: [Case; 6] = [
            ("FloatStorage", 4, 1, &[4], &[1]), // offset + extent past the end
            ("FloatStorage", 4, 0, &[2, 2], &[3, 1]), // stride reaches element 4
            ("FloatStorage", 5, 0, &[4], &[1]), // storage bigger than its entry
            ("FloatStorage", 4, 4, &[], &[]),   // 0-D past the end
            ("DoubleStorage", 4, 0, &[1], &[1]), // 32 bytes claimed, 16 present
            (
                "FloatStorage",
                4,
                0,
                &[2, 0x7FFF_FFFF],
                &[0x7FFF_FFFF, 0x7FFF_FFFF],
            ),
        ];
        for (i, (st, numel, offset, shape, strides)) in cases.into_iter().enumerate() {
            let pkl = P::new()
                .op(b"}")
                .str("w")
                .tensor(st, "0", numel, offset, shape, strides)
                .op(b"s.");
            match parse_archive(path(), &archive(&pkl, &[("0", &data)])) {
                Err(Error::BadModelFile { reason, .. }) => {
                    assert!(reason.contains("tensor `w`"), "case {i}: {reason}")
                }
                other => panic!("case {i}: {:?}", other.map(|_| ())),
            }
        }
        // A missing storage entry.
        let pkl = P::new()
            .op(b"}")
            .str("w")
            .tensor("FloatStorage", "7", 4, 0, &[4], &[1])
            .op(b"s.");
        let e = parse_archive(path(), &archive(&pkl, &[("0", &data)])).unwrap_err();
        assert!(e.to_string().contains("archive/data/7"), "{e}");
    }

    #[test]
    fn huge_broadcasts_are_refused_before_allocating() {
        let data = f32_bytes(&[1.0]);
        let pkl = P::new()
            .op(b"}(")
            .str("big") // 8 GiB from 4 bytes
            .tensor("FloatStorage", "0", 1, 0, &[0x7FFF_FFFF], &[0])
            .str("overflow") // 2^62 elements
            .tensor("FloatStorage", "0", 1, 0, &[0x7FFF_FFFF; 2], &[0, 0])
            .op(b"u.");
        let f = open(&archive(&pkl, &[("0", &data)])).unwrap();
        for name in ["big", "overflow"] {
            for e in [f.tensor(name).unwrap_err(), f.raw(name).unwrap_err()] {
                assert!(e.to_string().contains("contiguous()"), "{e}");
            }
        }
    }

    #[test]
    fn unsafe_globals_name_the_callable() {
        let pkl = P::new().global("os", "system").str("touch x").op(b"\x85R.");
        match parse_archive(path(), &archive(&pkl, &[])) {
            Err(e @ Error::UnsafePickle { .. }) => assert_eq!(
                e.to_string(),
                "pytorch_model.bin: the pickle calls `os.system`, which is not a tensor \
                 constructor; refusing to load it (pickles can run code)"
            ),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn archive_layout_errors() {
        let pkl = P::new().op(b"}.");
        let msg = |bytes: &[u8]| match parse_archive(path(), bytes) {
            Err(Error::BadModelFile { reason, .. }) => reason,
            other => panic!("{:?}", other.map(|_| ())),
        };
        assert!(msg(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").contains("legacy"));
        assert!(msg(b"").contains("empty"));
        assert!(msg(b"GGUF\x03\x00\x00\x00").contains("no zip header"));
        let z = build_zip(&[("a/x.pkl", &pkl.0, 0)], false);
        assert!(msg(&z).contains("no `<folder>/data.pkl`"));
        let z = build_zip(
            &[("a/data.pkl", &pkl.0, 0), ("b/data.pkl", &pkl.0, 0)],
            false,
        );
        assert!(msg(&z).contains("two pickles"));
        let z = build_zip(&[("a/data.pkl", &pkl.0, 0), ("b/data/0", b"", 0)], false);
        assert!(msg(&z).contains("outside the archive folder"));
        let z = build_zip(
            &[("a/data.pkl", &pkl.0, 0), ("a/byteorder", b"big", 0)],
            false,
        );
        assert!(msg(&z).contains("`big`-endian"));
        let z = build_zip(&[("a/data.pkl", &pkl.0, 8)], false);
        assert!(msg(&z).contains("compressed"));
        let z = build_zip(
            &[("a/data.pkl", &pkl.0, 0), ("a/constants.pkl", &pkl.0, 0)],
            false,
        );
        assert!(msg(&z).contains("TorchScript"));
        let z = build_zip(&[("a/data.pkl", b"\x80\x02\xff.", 0)], false);
        assert!(msg(&z).starts_with("data.pkl: byte 2"));
        // An empty state dict is a valid (if useless) file.
        let z = build_zip(&[("a/data.pkl", &pkl.0, 0)], true);
        assert!(parse_archive(path(), &z).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_and_byte_flip_is_a_typed_error() {
        let data = f32_bytes(&(0..12).map(|x| x as f32).collect::<Vec<_>>());
        let pkl = P::new()
            .op(b"}(")
            .str("t")
            .tensor("FloatStorage", "0", 12, 1, &[3, 2], &[1, 3])
            .str("h")
            .tensor("HalfStorage", "1", 2, 0, &[2], &[1])
            .op(b"u.");
        let bytes = archive(&pkl, &[("0", &data), ("1", &[0, 60, 0, 64])]);
        assert_eq!(parse_archive(path(), &bytes).unwrap().len(), 2);
        for cut in 0..bytes.len() {
            assert!(parse_archive(path(), &bytes[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xA5;
            // Either outcome is fine; what matters is no panic and no out-of-bounds read.
            if let Ok(f) = open(&b) {
                for name in f.names() {
                    let _ = f.tensor(name).map(|t| t.to_f32_vec());
                    let _ = f.raw(name);
                }
            }
        }
    }
}
