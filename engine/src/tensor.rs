//! Host-side weight tensors, kept in the format they were stored in.
//!
//! A [`HostTensor`] is a view of bytes (memory-mapped from the file, or owned when the file's
//! bytes could not be used in place) plus a [`DType`] and a shape in PyTorch order
//! (outermost first: a Linear weight is `[out, in]`). Backends consume these bytes directly;
//! nothing converts them per token.

use std::fmt;
use std::sync::Arc;

use half::{bf16, f16};

/// Element formats a weight can be stored in: plain floats, or ggml's quantised blocks
/// (see [`crate::quant`]), which cover 32 consecutive values of a row each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl DType {
    /// Values per storage unit (1 for floats, 32 for a quantised block).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => crate::quant::QK,
        }
    }

    /// Bytes per storage unit.
    pub fn type_size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q8_0 => 34,
        }
    }

    /// Alignment the kernels need for the bytes (the widest scalar field).
    pub fn align(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of `n` values, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// Parses `f32`, `f16`, `bf16`, `q4_0`, `q4_1`, `q8_0`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "q4_0" => DType::Q4_0,
            "q4_1" => DType::Q4_1,
            "q8_0" => DType::Q8_0,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0 => "q8_0",
        })
    }
}

/// A memory map that weights live in, and whether it maps a file (so that its pages can
/// be dropped and read again) or is anonymous memory (a file read into memory, a copy).
pub struct Map {
    bytes: memmap2::Mmap,
    file: bool,
}

/// The system's page size: 4 KiB on most machines, 16 or 64 KiB on some aarch64 ones.
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if p > 0 {
                return p as usize;
            }
        }
        // Unknown: a multiple of every page size Linux uses.
        64 << 10
    })
}

impl Map {
    /// A map of a file.
    pub fn file(bytes: memmap2::Mmap) -> Map {
        Map { bytes, file: true }
    }

    /// Anonymous memory.
    pub fn anon(bytes: memmap2::Mmap) -> Map {
        Map { bytes, file: false }
    }

    /// Lets the kernel drop the resident pages wholly inside `start..end` from this
    /// process (they are read from the file again if touched): a file map only, where this
    /// cannot lose data.
    fn release(&self, start: usize, end: usize) {
        // Whole pages only: `madvise` refuses an unaligned start. (With a fixed 64 KiB,
        // every page size Linux uses, each tensor's two edges stayed resident: 18 MB of
        // SmolLM2-135M's 272 tensors, beside its 86 MB of copied weights.)
        let page = page_size();
        let (a, b) = (start.next_multiple_of(page), end / page * page);
        if self.file && a < b {
            // SAFETY: a read-only private map of a file: dropped pages are read from the
            // file again on the next access, so nothing observes the advice. A failure only
            // leaves the pages resident.
            let _ = unsafe {
                self.bytes
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
            };
        }
    }
}

impl std::ops::Deref for Map {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Weights at least this long go into transparent huge pages on the CPU
/// ([`Storage::to_huge_pages`]); also the alignment of the copy.
pub const HUGE_PAGE: usize = 2 << 20;

/// Anonymous memory in transparent huge pages that the CPU backend copies weights smaller
/// than [`HUGE_PAGE`] into, one after another ([`Storage::into_arena`]), so that a model
/// of small matrices (SmolLM2-135M's are 0.2–0.5 MB) streams from huge pages too.
pub struct Arena {
    /// Keeps the memory mapped; written only through `ptr`, below `used`.
    _map: memmap2::MmapMut,
    ptr: *mut u8,
    len: usize,
    /// Bytes handed out (and written) so far.
    used: std::sync::Mutex<usize>,
}

// SAFETY: bytes below `used` are never written again and are only read; bytes above it are
// written by the one thread holding `used`'s lock, before they are handed out.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena of `len` bytes (a multiple of [`HUGE_PAGE`]), 2 MiB-aligned.
    #[cfg(target_os = "linux")]
    pub fn new(len: usize) -> std::io::Result<Arena> {
        let mut map = memmap2::MmapMut::map_anon(len + HUGE_PAGE)?;
        map.advise(memmap2::Advice::HugePage)?;
        let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
        // SAFETY: start + len ≤ the map's length.
        let ptr = unsafe { map.as_mut_ptr().add(start) };
        Ok(Arena {
            _map: map,
            ptr,
            len,
            used: std::sync::Mutex::new(0),
        })
    }
}

/// Bytes that live either in a memory map shared by many tensors or in an owned buffer.
#[derive(Clone)]
pub enum Storage {
    /// Bytes `offset..offset + len` of an [`Arena`].
    Pooled {
        arena: Arc<Arena>,
        offset: usize,
        len: usize,
    },
    Mapped {
        map: Arc<Map>,
        offset: usize,
        len: usize,
    },
    /// u64 words so the bytes are 8-aligned whatever the allocator does; `offset` and `len`
    /// select the bytes in use (views of one buffer share it).
    Owned {
        words: Arc<Vec<u64>>,
        offset: usize,
        len: usize,
    },
}

impl Storage {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Storage::Owned {
            words: Arc::new(words),
            offset: 0,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: inside the arena, below `used`: written once, now read-only.
            Storage::Pooled { arena, offset, len } => unsafe {
                std::slice::from_raw_parts(arena.ptr.add(*offset), *len)
            },
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Storage::Owned { words, offset, len } => {
                &bytemuck::cast_slice::<u64, u8>(words)[*offset..*offset + *len]
            }
        }
    }

    /// The bytes `start..start + len` of this storage, sharing the buffer.
    pub fn slice(&self, start: usize, len: usize) -> Storage {
        assert!(
            start + len <= self.bytes().len(),
            "storage slice out of range"
        );
        match self {
            Storage::Pooled { arena, offset, .. } => Storage::Pooled {
                arena: arena.clone(),
                offset: offset + start,
                len,
            },
            Storage::Mapped { map, offset, .. } => Storage::Mapped {
                map: map.clone(),
                offset: offset + start,
                len,
            },
            Storage::Owned { words, offset, .. } => Storage::Owned {
                words: words.clone(),
                offset: offset + start,
                len,
            },
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped { .. })
    }

    /// A copy of these bytes in anonymous memory that asks Linux for transparent huge pages,
    /// starting on a 2 MiB boundary so every whole 2 MiB of it can get one. Decode streams
    /// each weight once per token: with 4 KiB pages a 1.4B model's 790 MB is ~190 000 TLB
    /// misses a token, with 2 MiB pages ~400 (see ARCHITECTURE.md for the figures). A
    /// file map's pages behind the copy are released as it goes, so the copy never holds
    /// the weights twice.
    /// A copy of these bytes at the end of `arena` (64-byte aligned), or `None` when it has
    /// no room left; a file map's pages behind the copy are released as in
    /// [`Storage::to_huge_pages`].
    pub fn into_arena(&self, arena: &Arc<Arena>) -> Option<Storage> {
        let src = self.bytes();
        let len = src.len();
        let mut used = arena.used.lock().unwrap_or_else(|e| e.into_inner());
        let offset = used.next_multiple_of(64);
        if offset + len > arena.len {
            return None;
        }
        // SAFETY: offset..offset + len is inside the arena and above `used`: no storage
        // refers to it yet, and this thread holds the lock.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), arena.ptr.add(offset), len) };
        *used = offset + len;
        drop(used);
        if let Storage::Mapped { map, offset, .. } = self {
            map.release(*offset, offset + len);
        }
        Some(Storage::Pooled {
            arena: arena.clone(),
            offset,
            len,
        })
    }

    #[cfg(target_os = "linux")]
    pub fn to_huge_pages(&self) -> std::io::Result<Storage> {
        const CHUNK: usize = 8 << 20;
        let src = self.bytes();
        let len = src.len();
        let mut map = memmap2::MmapMut::map_anon(len + HUGE_PAGE)?;
        let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
        // Before any page is touched, so the faults allocate huge pages.
        map.advise(memmap2::Advice::HugePage)?;
        let mut done = 0;
        while done < len {
            let end = (done + CHUNK).min(len);
            map[start + done..start + end].copy_from_slice(&src[done..end]);
            if let Storage::Mapped {
                map: file, offset, ..
            } = self
            {
                file.release(offset + done, offset + end);
            }
            done = end;
        }
        Ok(Storage::Mapped {
            map: Arc::new(Map::anon(map.make_read_only()?)),
            offset: start,
            len,
        })
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "Storage({kind}, {} bytes)", self.bytes().len())
    }
}

/// A weight tensor on the host: dtype, shape (outermost first) and its bytes.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub storage: Storage,
}

impl HostTensor {
    /// Builds a tensor, moving bytes to an aligned owned buffer when the mapped bytes are not
    /// aligned for the dtype (safetensors does not promise alignment).
    pub fn new(dtype: DType, shape: Vec<usize>, storage: Storage) -> Self {
        let storage = if storage.bytes().as_ptr().align_offset(dtype.align()) != 0 {
            Storage::from_bytes(storage.bytes())
        } else {
            storage
        };
        HostTensor {
            dtype,
            shape,
            storage,
        }
    }

    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor::new(
            DType::F32,
            shape,
            Storage::from_bytes(bytemuck::cast_slice(data)),
        )
    }

    /// Rows `start..start + count` of the outermost dimension, sharing the bytes (how the
    /// fused q/k/v and gate/up projections of Phi-3 are split at load).
    pub fn slice_rows(&self, start: usize, count: usize) -> HostTensor {
        let outer = self.shape.first().copied().unwrap_or(1);
        assert!(start + count <= outer, "row slice out of range");
        let row_bytes = self.bytes().len() / outer.max(1);
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = count;
        }
        HostTensor::new(
            self.dtype,
            shape,
            self.storage.slice(start * row_bytes, count * row_bytes),
        )
    }

    /// The same bytes under another shape with as many elements.
    pub fn reshape(mut self, shape: Vec<usize>) -> HostTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape changes the size"
        );
        self.shape = shape;
        self
    }

    /// The tensor converted to f32 (an owned copy unless it already is f32).
    pub fn to_f32(&self) -> HostTensor {
        if self.dtype == DType::F32 {
            return self.clone();
        }
        HostTensor::from_f32(self.shape.clone(), &self.to_f32_vec())
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Rows and columns when the tensor is viewed as a matrix `[outer, last]`.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        let rows = self.numel().checked_div(cols).unwrap_or(0);
        (rows, cols)
    }

    /// All elements converted to f32 (for small tensors: norms, biases, tables).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        convert_to_f32(self.dtype, self.bytes(), &mut out);
        out
    }

    /// Bytes of one row of the matrix view.
    pub fn row_bytes(&self) -> usize {
        let (_, cols) = self.rows_cols();
        cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Row `r` of the matrix view, converted to f32 into `out`.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        convert_to_f32(self.dtype, &self.bytes()[r * rb..(r + 1) * rb], out);
    }
}

/// Converts `out.len()` elements of `dtype` stored in `bytes` to f32.
pub fn convert_to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    use crate::quant;
    match dtype {
        DType::Q4_0 => quant::dequantize_q4_0(bytemuck::cast_slice(bytes), out),
        DType::Q4_1 => quant::dequantize_q4_1(bytemuck::cast_slice(bytes), out),
        DType::Q8_0 => quant::dequantize_q8_0(bytemuck::cast_slice(bytes), out),
        DType::F32 => out.copy_from_slice(bytemuck::cast_slice(bytes)),
        DType::F16 => {
            let src: &[f16] = bytemuck::cast_slice(bytes);
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, out);
        }
        DType::BF16 => {
            let src: &[bf16] = bytemuck::cast_slice(bytes);
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The huge-page copy holds the same bytes, 2 MiB-aligned, and reading it back works
    /// after the file map behind it released its pages.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_huge_page_copy_keeps_the_bytes_and_releases_the_file_pages() {
        let len = 3 * HUGE_PAGE + 12_345;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        let dir = std::env::temp_dir().join(format!("pocketvlm-huge-{}", std::process::id()));
        std::fs::write(&dir, &bytes).unwrap();
        let file = std::fs::File::open(&dir).unwrap();
        // SAFETY: a private read-only map of a file this test alone writes.
        let map = Arc::new(Map::file(unsafe { memmap2::Mmap::map(&file) }.unwrap()));
        let offset = 4096 + 100;
        let src = Storage::Mapped {
            map: map.clone(),
            offset,
            len: len - offset,
        };
        let copy = src.to_huge_pages().unwrap();
        assert_eq!(copy.bytes(), &bytes[offset..]);
        assert_eq!(copy.bytes().as_ptr() as usize % HUGE_PAGE, 0);
        // The source's released pages read back from the file.
        assert_eq!(src.bytes(), &bytes[offset..]);
        // An anonymous map is never released (its pages would read back as zeros).
        let anon = {
            let mut m = memmap2::MmapMut::map_anon(len).unwrap();
            m.copy_from_slice(&bytes);
            Arc::new(Map::anon(m.make_read_only().unwrap()))
        };
        let src = Storage::Mapped {
            map: anon,
            offset: 0,
            len,
        };
        let copy = src.to_huge_pages().unwrap();
        assert_eq!(copy.bytes(), &bytes[..]);
        assert_eq!(src.bytes(), &bytes[..]);

        // Small weights one after another in an arena, 64-byte aligned, until it is full.
        let arena = Arc::new(Arena::new(HUGE_PAGE).unwrap());
        let parts = [(0, 1000), (5000, 70_000), (100_000, 900_000)];
        let copies: Vec<Storage> = parts
            .iter()
            .map(|&(a, n)| src.slice(a, n).into_arena(&arena).unwrap())
            .collect();
        for (c, &(a, n)) in copies.iter().zip(&parts) {
            assert_eq!(c.bytes(), &bytes[a..a + n]);
            assert_eq!(c.bytes().as_ptr() as usize % 64, 0);
            assert_eq!(c.slice(10, 20).bytes(), &bytes[a + 10..a + 30]);
        }
        assert!(src.slice(0, 1_200_000).into_arena(&arena).is_none());
        std::fs::remove_file(&dir).unwrap();
    }

    /// This process's resident bytes of the mapping that holds `addr` (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn resident_bytes_at(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((Ok(a), Ok(b))) = range
                .filter(|(a, _)| !a.ends_with(':'))
                .map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)))
            {
                inside = (a..b).contains(&addr);
                continue;
            }
            if let Some(kb) = line.strip_prefix("Rss:").filter(|_| inside) {
                let kb = kb.trim().trim_end_matches("kB").trim();
                return kb.parse::<usize>().unwrap() << 10;
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// Copying small weights out of a file map gives their file pages back, all but the
    /// pages they share with their neighbours (a fixed 64 KiB alignment kept every page of
    /// weights smaller than that).
    #[cfg(target_os = "linux")]
    #[test]
    fn copies_of_small_weights_release_their_file_pages() {
        let (n, size) = (40, 5 * page_size() + 123);
        let bytes: Vec<u8> = (0..n * size).map(|i| (i % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("pocketvlm-rel-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private read-only map of a file this test alone writes.
        let map = Arc::new(Map::file(unsafe { memmap2::Mmap::map(&file) }.unwrap()));
        let sum: u64 = map.iter().map(|&b| b as u64).sum();
        assert_eq!(sum, bytes.iter().map(|&b| b as u64).sum::<u64>());
        let before = resident_bytes_at(map.as_ptr() as usize);
        assert!(before >= n * size - page_size(), "{before}");
        let arena = Arc::new(Arena::new(HUGE_PAGE).unwrap());
        for i in 0..n {
            let src = Storage::Mapped {
                map: map.clone(),
                offset: i * size,
                len: size,
            };
            let copy = src.into_arena(&arena).unwrap();
            assert_eq!(copy.bytes(), &bytes[i * size..(i + 1) * size]);
        }
        let after = resident_bytes_at(map.as_ptr() as usize);
        // At most the two edge pages of each weight stay.
        assert!(
            after <= 2 * n * page_size(),
            "{before} → {after} bytes resident"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
