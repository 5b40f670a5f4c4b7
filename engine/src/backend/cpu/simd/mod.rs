//! Kernel flavours and their dispatch.
//!
//! Every hot kernel exists as a portable version (`generic`, the same arithmetic as the
//! scalar reference, written over the SIMD-friendly activation layout) and as explicit
//! SIMD for x86_64 (AVX2+FMA+F16C; AVX-512 F/BW/VL with VNNI) and aarch64 (NEON; the
//! `dotprod` extension's `sdot`). [`Isa::detect`] picks the best flavour the CPU has at
//! run time, so one binary runs everywhere; `POCKETVLM_ISA=scalar|avx2|avx512|neon|dotprod`
//! forces a lower one (benchmarks, debugging). Tests run every flavour the machine has
//! against the scalar reference.
//!
//! Quantised matrices are multiplied by int8 activations, as ggml does: each activation
//! row is quantised per 32-value block to `qs` (i8), `d` (f32 scale) and `s = d·Σqs`, and
//! the weight blocks are dotted with integer instructions (VNNI `vpdpbusd`, AVX2
//! `vpmaddubsw`, NEON `sdot`/`smull`). Q4_0's −8 offset and the unsigned trick for Q8_0
//! are folded into the integer accumulator's initial value; Q4_1's minimum uses `s`.

pub mod generic;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(target_arch = "x86_64")]
pub mod vnni;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use crate::quant::QK;
use crate::tensor::DType;

/// An instruction-set level; later variants are faster on the machines that have them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust (the compiler's baseline vectorisation only).
    Scalar,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// x86_64 with AVX-512 F/BW/VL and VNNI.
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
    /// aarch64 with the dot-product extension (`sdot`).
    NeonDot,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "dotprod",
        }
    }

    /// Every level this CPU can run, slowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                v.push(Isa::Neon);
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    v.push(Isa::NeonDot);
                }
            }
        }
        v
    }

    /// The best level available, or the one `POCKETVLM_ISA` names if the CPU has it.
    pub fn detect() -> Isa {
        let avail = Isa::available();
        let best = *avail.last().unwrap_or(&Isa::Scalar);
        match std::env::var("POCKETVLM_ISA") {
            Ok(name) => avail
                .iter()
                .copied()
                .find(|i| i.name() == name)
                .unwrap_or_else(|| {
                    log::warn!(
                        "POCKETVLM_ISA={name} is not available here; using {}",
                        best.name()
                    );
                    best
                }),
            Err(_) => best,
        }
    }
}

/// Quantised activation rows: `rows × k` int8 values, per-block scales `d` and `s = d·Σq`.
#[derive(Clone, Copy)]
pub struct Q8Acts<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    /// Blocks per row (`k / 32`).
    pub nb: usize,
    /// A single row's whole 16-block groups in the Q4 decode kernel's byte order
    /// ([`split_blocks8`]), where [`wants_split`] says it reads them; empty otherwise.
    pub split: &'a [u8],
}

impl<'a> Q8Acts<'a> {
    pub fn rows(&self) -> usize {
        self.d.len().checked_div(self.nb).unwrap_or(0)
    }

    /// The blocks from `first` on of a single row (a decode kernel's tail).
    pub fn blocks_from(&self, first: usize) -> Q8Acts<'a> {
        Q8Acts {
            qs: &self.qs[first * QK..self.nb * QK],
            d: &self.d[first..self.nb],
            s: &self.s[first..self.nb],
            nb: self.nb - first,
            split: &[],
        }
    }
}

/// Quantised activation rows at 16 bits: like [`Q8Acts`] with `i16` values.
#[derive(Clone, Copy)]
pub struct Q16Acts<'a> {
    pub qs: &'a [i16],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub nb: usize,
    /// A single row's blocks again in the decode kernel's pair order ([`pair_blocks16`]),
    /// where [`wants_pairs16`] says the kernel reads it; empty otherwise.
    pub paired: &'a [i16],
    /// A single row's whole 16-block groups split into bytes for the Q4 decode kernel
    /// ([`split_blocks16`]), where [`wants_split`] says it reads them; empty otherwise.
    pub split: &'a [u8],
}

/// Whether this level's decode kernel (one activation row, int16) reads the activations in
/// the pair order of [`pair_blocks16`] as well.
pub fn wants_pairs16(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        return true;
    }
    let _ = isa;
    false
}

/// Whether this level's Q4 decode kernel reads the activations in its byte order:
/// [`split_blocks16`] (int16, instead of in pair order) or [`split_blocks8`] (int8).
pub fn wants_split(isa: Isa, dtype: DType) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && matches!(dtype, DType::Q4_0 | DType::Q4_1) && x86::has_vbmi() {
        return true;
    }
    let _ = (isa, dtype);
    false
}

/// Bytes of [`split_blocks16`]'s output for a row of `nb` blocks (whole 16-block groups).
pub fn split16_len(nb: usize) -> usize {
    nb / 16 * 16 * QK * 2
}

/// Bytes of [`split_blocks8`]'s output for `nb` blocks.
pub fn split8_len(nb: usize) -> usize {
    nb / 16 * 16 * QK
}

/// One int8 activation row's whole 16-block groups in the order of the Q4 decode kernel's
/// nibble registers: each quad of blocks `4q … 4q+3` takes 128 bytes, elements 0–15 of
/// each block (block `j` in bytes `16j …`), then elements 16–31 in the same order — the
/// `h` half of [`split_blocks16`]'s layout.
pub fn split_blocks8(q: &[i8], out: &mut [u8]) {
    const H: usize = QK / 2;
    let quads = q.len() / QK / 16 * 4;
    for (quad, dst) in q
        .chunks_exact(4 * QK)
        .take(quads)
        .zip(out.chunks_exact_mut(128))
    {
        for (j, block) in quad.chunks_exact(QK).enumerate() {
            for (half, vals) in block.chunks_exact(H).enumerate() {
                for (i, &a) in vals.iter().enumerate() {
                    dst[half * 64 + j * H + i] = a as u8;
                }
            }
        }
    }
}

/// One int16 activation row's whole 16-block groups as bytes, for a `vpdpbusd` against
/// unsigned Q4 nibbles without losing a bit: each value `a = 256·h + l` with `h = a >> 8`
/// (signed) and `l = a & 255` (unsigned). Each quad of blocks `4q … 4q+3` takes 256 bytes:
/// `h` of elements 0–15 of each block (block `j` in bytes `16j …`), `h` of elements 16–31,
/// then `l` of elements 0–15 and `l` of elements 16–31, in the same order — the order of a
/// register holding the four blocks' 16 nibble bytes, low nibbles (elements 0–15) or high.
pub fn split_blocks16(q: &[i16], out: &mut [u8]) {
    const H: usize = QK / 2;
    let quads = q.len() / QK / 16 * 4;
    for (quad, dst) in q
        .chunks_exact(4 * QK)
        .take(quads)
        .zip(out.chunks_exact_mut(256))
    {
        for (j, block) in quad.chunks_exact(QK).enumerate() {
            for (half, vals) in block.chunks_exact(H).enumerate() {
                for (i, &a) in vals.iter().enumerate() {
                    let at = half * 64 + j * H + i;
                    dst[at] = (a >> 8) as u8;
                    dst[128 + at] = a as u8;
                }
            }
        }
    }
}

/// One int16 activation row in pair order: for blocks 2p and 2p+1, elements 0–15 of both,
/// then elements 16–31 of both — the order in which one load of 32 bytes of the two
/// blocks' Q4 nibbles widens (low nibbles, then high). An odd last block is left out.
pub fn pair_blocks16(q: &[i16], out: &mut [i16]) {
    const H: usize = QK / 2;
    for (src, dst) in q.chunks_exact(2 * QK).zip(out.chunks_exact_mut(2 * QK)) {
        dst[..H].copy_from_slice(&src[..H]);
        dst[H..2 * H].copy_from_slice(&src[2 * H..3 * H]);
        dst[2 * H..3 * H].copy_from_slice(&src[H..2 * H]);
        dst[3 * H..].copy_from_slice(&src[3 * H..]);
    }
}

impl<'a> Q16Acts<'a> {
    pub fn rows(&self) -> usize {
        self.d.len().checked_div(self.nb).unwrap_or(0)
    }

    /// A single row's blocks from `first` on (in element order only).
    pub fn blocks_from(&self, first: usize) -> Q16Acts<'a> {
        Q16Acts {
            qs: &self.qs[first * QK..self.nb * QK],
            d: &self.d[first..self.nb],
            s: &self.s[first..self.nb],
            nb: self.nb - first,
            paired: &[],
            split: &[],
        }
    }
}

/// Where a kernel writes `out[t][n]`: `ptr + t * ld + n`. Tasks write disjoint elements.
#[derive(Clone, Copy)]
pub struct OutPtr {
    pub ptr: *mut f32,
    pub ld: usize,
}

// SAFETY: kernels running on different threads write disjoint elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `(t, n)` must be inside the output and written by this task alone.
    #[inline(always)]
    pub unsafe fn write(self, t: usize, n: usize, v: f32) {
        unsafe { *self.ptr.add(t * self.ld + n) = v };
    }

    /// # Safety
    /// As [`OutPtr::write`].
    #[inline(always)]
    pub unsafe fn add(self, t: usize, n: usize, v: f32) {
        unsafe { *self.ptr.add(t * self.ld + n) += v };
    }
}

/// Quantises `x` (whole rows of `nb` blocks) into `qs`, `d`, `s`.
pub fn quantize_rows(isa: Isa, x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    assert_eq!(x.len(), qs.len());
    assert_eq!(x.len(), d.len() * 32);
    assert_eq!(d.len(), s.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { x86::quantize_avx2(x, qs, d, s) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => unsafe { neon::quantize(x, qs, d, s) },
        _ => generic::quantize(x, qs, d, s),
    }
}

/// `out[t][r] = w_r · x_t` for weight rows `w` (`rows` rows of `dtype` blocks, each
/// `row_bytes` long, starting at row `r0` of the output) and all activation rows.
///
/// # Safety
/// `w` must hold `rows` rows; `out` must cover `[acts.rows(), r0 + rows)` and no other task
/// may write those elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn qgemm(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    debug_assert!(w.len() >= rows * row_bytes);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::qgemm_avx512(dtype, w, row_bytes, rows, acts, out, r0) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::qgemm_avx2(dtype, w, row_bytes, rows, acts, out, r0) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::qgemm(false, dtype, w, row_bytes, rows, acts, out, r0) },
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => unsafe { neon::qgemm(true, dtype, w, row_bytes, rows, acts, out, r0) },
        _ => unsafe { generic::qgemm(dtype, w, row_bytes, rows, acts, out, r0) },
    }
}

/// Quantises `x` to int16 per 32-block (the accurate activation format).
pub fn quantize_rows16(isa: Isa, x: &[f32], qs: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    assert_eq!(x.len(), qs.len());
    assert_eq!(x.len(), d.len() * 32);
    assert_eq!(d.len(), s.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { x86::quantize16_avx2(x, qs, d, s) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => unsafe { neon::quantize16(x, qs, d, s) },
        _ => generic::quantize16(x, qs, d, s),
    }
}

/// [`qgemm`] with int16 activations.
///
/// # Safety
/// As [`qgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn qgemm16(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    debug_assert!(w.len() >= rows * row_bytes);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::qgemm16_avx512(dtype, w, row_bytes, rows, acts, out, r0) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::qgemm16_avx2(dtype, w, row_bytes, rows, acts, out, r0) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => unsafe {
            neon::qgemm16(dtype, w, row_bytes, rows, acts, out, r0)
        },
        _ => unsafe { generic::qgemm16(dtype, w, row_bytes, rows, acts, out, r0) },
    }
}

/// `out[t][r0 + r] = w_r · x_t` for f32 weight rows `w` (`rows × k`) and activation rows `x`
/// (`t_rows × k`).
///
/// # Safety
/// As [`qgemm`].
pub unsafe fn fgemm(isa: Isa, w: &[f32], rows: usize, x: &[f32], k: usize, out: OutPtr, r0: usize) {
    debug_assert!(w.len() >= rows * k);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::fgemm_avx512(w, rows, x, k, out, r0) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::fgemm_avx2(w, rows, x, k, out, r0) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => unsafe { neon::fgemm(w, rows, x, k, out, r0) },
        _ => unsafe { generic::fgemm(w, rows, x, k, out, r0) },
    }
}

/// Float weights (F32, F16, BF16) as stored, converted in registers, where this flavour
/// can; `false` when the caller must convert rows to f32 first (then [`fgemm`]).
///
/// # Safety
/// `w` holds `rows × k` values of `dtype`; output as in [`qgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn fgemm_native(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    rows: usize,
    x: &[f32],
    k: usize,
    out: OutPtr,
    r0: usize,
) -> bool {
    debug_assert!(w.len() >= rows * k * dtype.type_size());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            unsafe { x86::fgemm_native_avx512(dtype, w, rows, x, k, out, r0) };
            true
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            unsafe { x86::fgemm_native_avx2(dtype, w, rows, x, k, out, r0) };
            true
        }
        _ => {
            let _ = (dtype, w, rows, x, k, out, r0);
            false
        }
    }
}

/// Scratch values [`fgemm_panel`] wants for a panel of `rows` weight rows.
pub fn panel_scratch(isa: Isa, rows: usize) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::blocked_scratch(rows),
        _ => {
            let _ = rows;
            0
        }
    }
}

/// [`fgemm`] for a prefill panel (many activation rows): K-blocked where the flavour has it.
///
/// # Safety
/// As [`fgemm`]; `acc` holds [`panel_scratch`]`(isa, rows)` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn fgemm_panel(
    isa: Isa,
    w: &[f32],
    rows: usize,
    x: &[f32],
    k: usize,
    out: OutPtr,
    r0: usize,
    acc: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::fgemm_blocked_avx512(w, rows, x, k, out, r0, acc) },
        _ => {
            let _ = acc;
            unsafe { fgemm(isa, w, rows, x, k, out, r0) }
        }
    }
}

/// Whether [`bf16_gemm`] has a fast kernel here (AVX-512 BF16); the prefill of quantised
/// weights uses it when it does.
pub fn has_bf16_gemm(isa: Isa) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::has_bf16(),
        _ => false,
    }
}

/// f32 values (a multiple of 32) to bf16, round to nearest even.
pub fn to_bf16(isa: Isa, x: &[f32], out: &mut [u16]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if x86::has_bf16() => unsafe { x86::to_bf16_avx512(x, out) },
        _ => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = half::bf16::from_f32(v).to_bits();
            }
        }
    }
}

/// bf16 values of a packed weight panel of `rows` rows of `k` values ([`pack_bf16`]).
pub fn bf16_packed_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(BF_ROWS) * BF_ROWS * k
}

/// Scratch bf16 values [`pack_bf16`] needs for rows of `k` values.
pub fn bf16_pack_scratch(k: usize) -> usize {
    16 * k
}

/// Rows per tile of a packed bf16 weight panel.
pub const BF_ROWS: usize = 32;

/// Dequantises `rows` quantised weight rows (`row_bytes` apart, `k` values each, `k` a
/// multiple of 32) into [`bf16_gemm`]'s packed layout: tiles of [`BF_ROWS`] rows, and in
/// each tile, for every pair `p` of k values, the tile's rows side by side — u16 index
/// `tile·32·k + p·64 + 2j + e` holds row `j`'s value `2p + e`. Rows past `rows` are zero.
/// `tmp` holds [`bf16_pack_scratch`]`(k)` values.
#[allow(clippy::too_many_arguments)]
pub fn pack_bf16(
    isa: Isa,
    dtype: DType,
    raw: &[u8],
    row_bytes: usize,
    rows: usize,
    k: usize,
    out: &mut [u16],
    tmp: &mut [u16],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if x86::has_bf16() => unsafe {
            x86::pack_bf16_avx512(dtype, raw, row_bytes, rows, k, out, tmp)
        },
        _ => {
            let _ = tmp;
            let len = bf16_packed_len(rows, k);
            out[..len].fill(0);
            let mut f = vec![0.0; k];
            for r in 0..rows {
                dequantize(isa, dtype, &raw[r * row_bytes..(r + 1) * row_bytes], &mut f);
                let (tile, j) = (r / BF_ROWS, r % BF_ROWS);
                for (i, &v) in f.iter().enumerate() {
                    let at = tile * BF_ROWS * k + i / 2 * 64 + 2 * j + i % 2;
                    out[at] = half::bf16::from_f32(v).to_bits();
                }
            }
        }
    }
}

/// Activation rows per group of [`pack_bf16_acts`]'s layout (the bf16 GEMM's register
/// tile: 12 rows × 32 weight rows).
pub const BF_MR: usize = 12;

/// bf16 values of `t_rows` packed activation rows of `k` values ([`pack_bf16_acts`]).
pub fn bf16_acts_len(t_rows: usize, k: usize) -> usize {
    t_rows.div_ceil(BF_MR) * BF_MR * k
}

/// f32 activation rows (`k` values each, `k` a multiple of 32) to bf16 in [`bf16_gemm`]'s
/// layout: groups of [`BF_MR`] rows, and in each group, for every pair `p` of k values, the
/// group's rows side by side — u16 index `g·12·k + p·24 + 2m + e` holds row `12g + m`'s
/// value `2p + e`, so a register tile broadcasts its rows' pairs from one cache line.
/// Rows past the last are zero.
pub fn pack_bf16_acts(isa: Isa, x: &[f32], k: usize, out: &mut [u16]) {
    let t_rows = x.len() / k.max(1);
    let len = bf16_acts_len(t_rows, k);
    // The last group's missing rows (an empty range when the groups are full).
    out[(t_rows - t_rows % BF_MR) * k..len].fill(0);
    let mut chunk = [0u16; 32];
    for (t, xr) in x.chunks_exact(k).enumerate() {
        let (g, m) = (t / BF_MR, t % BF_MR);
        let group = &mut out[g * BF_MR * k..(g + 1) * BF_MR * k];
        for (c, xc) in xr.chunks_exact(32).enumerate() {
            to_bf16(isa, xc, &mut chunk);
            for (i, pair) in chunk.chunks_exact(2).enumerate() {
                let at = (c * 16 + i) * 2 * BF_MR + 2 * m;
                group[at] = pair[0];
                group[at + 1] = pair[1];
            }
        }
    }
}

/// `out[t][r0 + r] = Σ_k x[t][k] · w[r][k]` over a packed bf16 weight panel of `rows` rows
/// ([`pack_bf16`]) and `t_rows` packed bf16 activation rows ([`pack_bf16_acts`]),
/// accumulated in f32; `k` is a multiple of 32.
///
/// # Safety
/// As [`fgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn bf16_gemm(
    isa: Isa,
    w: &[u16],
    rows: usize,
    x: &[u16],
    t_rows: usize,
    k: usize,
    out: OutPtr,
    r0: usize,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if x86::has_bf16() => unsafe {
            x86::bf16_gemm_avx512(w, rows, x, t_rows, k, out, r0)
        },
        _ => {
            let f = |v: u16| half::bf16::from_bits(v).to_f32();
            for t in 0..t_rows {
                let (g, m) = (t / BF_MR, t % BF_MR);
                for r in 0..rows {
                    let (tile, j) = (r / BF_ROWS, r % BF_ROWS);
                    let dot = (0..k)
                        .map(|i| {
                            let wi = tile * BF_ROWS * k + i / 2 * 64 + 2 * j + i % 2;
                            let xi = g * BF_MR * k + i / 2 * 2 * BF_MR + 2 * m + i % 2;
                            f(w[wi]) * f(x[xi])
                        })
                        .sum();
                    unsafe { out.write(t, r0 + r, dot) };
                }
            }
        }
    }
}

/// Whether [`i8_gemm`] has a kernel here for `dtype` weights (AVX-512 VNNI; Q4_0, Q4_1):
/// the prefill of int8 activations uses it when it does.
pub fn has_i8_gemm(isa: Isa, dtype: DType) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => vnni::supports(dtype),
        _ => {
            let _ = dtype;
            false
        }
    }
}

/// Bytes of the packed panel [`pack_i8_gemm`] writes for `rows` weight rows of `nb` blocks.
pub fn i8_packed_len(isa: Isa, rows: usize, nb: usize) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => vnni::packed_len(rows, nb),
        _ => {
            let _ = (rows, nb);
            0
        }
    }
}

/// Repacks a panel of weight rows for [`i8_gemm`] (only where [`has_i8_gemm`]).
pub fn pack_i8_gemm(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    nb: usize,
    out: &mut [u8],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => vnni::pack_q4(dtype, w, row_bytes, rows, nb, out),
        _ => {
            let _ = (dtype, w, row_bytes, rows, nb, out);
            unreachable!("pack_i8_gemm without has_i8_gemm")
        }
    }
}

/// The per-block integer start values [`i8_gemm`] wants for activations `qs` against
/// `dtype` weights (Q4_0's offset).
pub fn i8_gemm_offsets(isa: Isa, dtype: DType, qs: &[i8], out: &mut Vec<i32>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => vnni::offset_sums(dtype, qs, out),
        _ => {
            let _ = (dtype, qs);
            out.clear()
        }
    }
}

/// `out[t][r0 + r] = w_r · x_t` for a panel of `dtype` weights packed by [`pack_i8_gemm`]
/// and int8 activation rows with their [`i8_gemm_offsets`] `init` (only where
/// [`has_i8_gemm`]).
///
/// # Safety
/// As [`qgemm`]; `packed` must come from [`pack_i8_gemm`] with these `rows` and `acts.nb`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn i8_gemm(
    isa: Isa,
    dtype: DType,
    packed: &[u8],
    rows: usize,
    acts: Q8Acts,
    init: &[i32],
    out: OutPtr,
    r0: usize,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { vnni::gemm(dtype, packed, rows, acts, init, out, r0) },
        _ => {
            let _ = (dtype, packed, rows, acts, init, out, r0);
            unreachable!("i8_gemm without has_i8_gemm")
        }
    }
}

/// Quantised weight bytes (whole blocks) to f32.
pub fn dequantize(isa: Isa, dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dequantize_avx512(dtype, bytes, out) },
        _ => crate::tensor::convert_to_f32(dtype, bytes, out),
    }
}

/// Tile shapes every flavour's GEMM loops use: up to `TILE_R` weight rows by `TILE_C`
/// activation rows per micro-kernel call.
pub const TILE_R: usize = 4;
pub const TILE_C: usize = 4;

/// Calls `f(r, c, nr, nc)` for every tile of `rows × cols`, full tiles first along each
/// axis, tails one row/column at a time (so kernels need only the shapes 4×4, 4×1, 1×4,
/// 1×1).
#[inline(always)]
pub fn for_tiles(rows: usize, cols: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let mut c = 0;
    while c < cols {
        let nc = if cols - c >= TILE_C { TILE_C } else { 1 };
        // A single activation row (decode) streams the weights one row at a time: one
        // sequential stream per thread is what hardware prefetchers follow best.
        let tile_r = if cols == 1 { 1 } else { TILE_R };
        let mut r = 0;
        while r < rows {
            let nr = if rows - r >= tile_r { tile_r } else { 1 };
            f(r, c, nr, nc);
            r += nr;
        }
        c += nc;
    }
}
