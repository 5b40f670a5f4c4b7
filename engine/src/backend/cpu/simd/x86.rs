//! x86_64 kernels: AVX2+FMA+F16C, and AVX-512 (F/BW/VL) with VNNI.
//!
//! Quantised GEMM micro-kernels compute a tile of `R` weight rows × `C` activation rows.
//! AVX-512 handles two 32-value blocks per 512-bit register: the weight nibbles are
//! expanded to bytes in the activation's element order, `vpdpbusd` multiplies unsigned
//! weight bytes by signed activation bytes, and the weight offset (Q4_0's 8, Q8_0's 128 after
//! flipping the sign bit) is subtracted through the accumulator's initial value
//! (`−offset·Σy`, computed once per activation block and shared by the tile's rows). Each
//! 16-lane result is converted to f32 and scaled by `d_w·d_x` (lanes 0–7 block b, 8–15
//! block b+1); Q4_1 adds `m·s` through a second FMA. AVX2 works one block per register with
//! `vpmaddubsw`+`vpmaddwd` (Q8_0 with the sign trick, since 255·127·2 overflows i16).

// Tiles index several arrays with one counter; kernels take many operands.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{BF_MR, OutPtr, Q8Acts, for_tiles, split8_len, split16_len};
use crate::quant::QK;
use crate::tensor::DType;

#[inline(always)]
unsafe fn read_u16(p: *const u8) -> u16 {
    unsafe { std::ptr::read_unaligned(p as *const u16) }
}

// ---------------------------------------------------------------------------------------
// Activation quantisation (AVX2; the AVX-512 level uses it too).

/// Rounds half away from zero, like `f32::round`, so results equal the reference exactly.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_away(y: __m256) -> __m256 {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
    let diff = _mm256_sub_ps(y, t);
    let sign = _mm256_and_ps(y, _mm256_set1_ps(-0.0));
    let one = _mm256_or_ps(_mm256_set1_ps(1.0), sign);
    let abs_diff = _mm256_andnot_ps(_mm256_set1_ps(-0.0), diff);
    let need = _mm256_cmp_ps::<_CMP_GE_OQ>(abs_diff, _mm256_set1_ps(0.5));
    _mm256_add_ps(t, _mm256_and_ps(need, one))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32_256(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; slices as in [`super::quantize_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = d.len();
    assert!(x.len() >= nb * QK && qs.len() >= nb * QK && s.len() >= nb);
    let abs_mask = _mm256_set1_ps(-0.0);
    for b in 0..nb {
        // SAFETY: block b is inside x and qs (checked above).
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m01 = _mm256_max_ps(
                _mm256_andnot_ps(abs_mask, v[0]),
                _mm256_andnot_ps(abs_mask, v[1]),
            );
            let m23 = _mm256_max_ps(
                _mm256_andnot_ps(abs_mask, v[2]),
                _mm256_andnot_ps(abs_mask, v[3]),
            );
            let m = _mm256_max_ps(m01, m23);
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            let amax = _mm_cvtss_f32(m);
            let dd = amax / 127.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let q: [__m256i; 4] =
                std::array::from_fn(|i| _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[i], idv))));
            let sum = hsum_epi32_256(_mm256_add_epi32(
                _mm256_add_epi32(q[0], q[1]),
                _mm256_add_epi32(q[2], q[3]),
            ));
            let p01 = _mm256_packs_epi32(q[0], q[1]);
            let p23 = _mm256_packs_epi32(q[2], q[3]);
            let packed = _mm256_packs_epi16(p01, p23);
            let packed =
                _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK) as *mut __m256i, packed);
            d[b] = dd;
            s[b] = dd * sum as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------
// AVX-512 quantised GEMM.

/// A weight block format as the AVX-512 kernel reads it, two blocks at a time.
trait Fmt512 {
    const BYTES: usize;
    /// Subtracted from every weight byte (through the accumulator's initial value).
    const OFFSET: u8;
    /// Whether the format has a per-block minimum (Q4_1).
    const MIN: bool;
    /// Weight bytes (unsigned, activation element order), `d` spread over 8 lanes per
    /// block, and the minimum likewise (zero without one). `two`: blocks at `p` and
    /// `p + BYTES`; otherwise only `p`, the upper half zero.
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512);
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn spread_f16(b0: u16, b1: u16) -> __m512 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(b0 as i32 | ((b1 as i32) << 16)));
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn spread_f32(v: __m128) -> __m512 {
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// Expands 16 bytes of nibbles per block into [lo₀, hi₀, lo₁, hi₁] (128-bit lanes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles(w0: __m128i, w1: __m128i) -> __m512i {
    let y = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(w0), w1);
    let z = _mm512_permutexvar_epi64(
        _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3),
        _mm512_castsi256_si512(y),
    );
    let four = 0x0004_0004_0004_0004i64;
    let shifts = _mm512_setr_epi64(0, 0, four, four, 0, 0, four, four);
    _mm512_and_si512(_mm512_srlv_epi16(z, shifts), _mm512_set1_epi8(0x0F))
}

struct Q40;
struct Q41;
struct Q80;

impl Fmt512 for Q40 {
    const BYTES: usize = 18;
    const OFFSET: u8 = 8;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        unsafe {
            let w0 = _mm_loadu_si128(p.add(2) as *const __m128i);
            let (w1, d1) = if two {
                (
                    _mm_loadu_si128(p.add(20) as *const __m128i),
                    read_u16(p.add(18)),
                )
            } else {
                (_mm_setzero_si128(), 0)
            };
            (
                nibbles(w0, w1),
                spread_f16(read_u16(p), d1),
                _mm512_setzero_ps(),
            )
        }
    }
}

impl Fmt512 for Q41 {
    const BYTES: usize = 20;
    const OFFSET: u8 = 0;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        unsafe {
            let w0 = _mm_loadu_si128(p.add(4) as *const __m128i);
            let (w1, d1, m1) = if two {
                (
                    _mm_loadu_si128(p.add(24) as *const __m128i),
                    read_u16(p.add(20)),
                    read_u16(p.add(22)),
                )
            } else {
                (_mm_setzero_si128(), 0, 0)
            };
            (
                nibbles(w0, w1),
                spread_f16(read_u16(p), d1),
                spread_f16(read_u16(p.add(2)), m1),
            )
        }
    }
}

impl Fmt512 for Q80 {
    const BYTES: usize = 34;
    const OFFSET: u8 = 128;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8, two: bool) -> (__m512i, __m512, __m512) {
        unsafe {
            let a = _mm256_loadu_si256(p.add(2) as *const __m256i);
            let (b, d1) = if two {
                (
                    _mm256_loadu_si256(p.add(36) as *const __m256i),
                    read_u16(p.add(34)),
                )
            } else {
                (_mm256_setzero_si256(), 0)
            };
            let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
            // Signed → unsigned by flipping the sign bit (w + 128); the offset undoes it.
            // The upper half of a single block stays zero: its activations are zero too.
            let flip = if two {
                _mm512_set1_epi8(-128)
            } else {
                _mm512_maskz_set1_epi8(0xFFFF_FFFF, -128)
            };
            (
                _mm512_xor_si512(z, flip),
                spread_f16(read_u16(p), d1),
                _mm512_setzero_ps(),
            )
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn qtile512<F: Fmt512, const R: usize, const C: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &Q8Acts,
    t0: usize,
    out: OutPtr,
    n0: usize,
) {
    unsafe {
        let nb = acts.nb;
        let k = nb * QK;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let offset = _mm512_set1_epi8(F::OFFSET as i8);
        let mut b = 0;
        while b < nb {
            let two = b + 1 < nb;
            let mut a = [_mm512_setzero_si512(); C];
            let mut dx = [_mm512_setzero_ps(); C];
            let mut init = [_mm512_setzero_si512(); C];
            let mut sx = [_mm512_setzero_ps(); C];
            for c in 0..C {
                let t = t0 + c;
                let qp = acts.qs.as_ptr().add(t * k + b * QK);
                let dp = acts.d.as_ptr().add(t * nb + b);
                let sp = acts.s.as_ptr().add(t * nb + b);
                if two {
                    a[c] = _mm512_loadu_si512(qp as *const __m512i);
                    dx[c] = spread_f32(_mm_castsi128_ps(_mm_loadl_epi64(dp as *const __m128i)));
                    if F::MIN {
                        sx[c] = _mm512_mul_ps(
                            spread_f32(_mm_castsi128_ps(_mm_loadl_epi64(sp as *const __m128i))),
                            _mm512_set1_ps(0.125),
                        );
                    }
                } else {
                    a[c] = _mm512_maskz_loadu_epi8(0xFFFF_FFFF, qp);
                    dx[c] = spread_f32(_mm_load_ss(dp));
                    if F::MIN {
                        sx[c] = _mm512_mul_ps(spread_f32(_mm_load_ss(sp)), _mm512_set1_ps(0.125));
                    }
                }
                if F::OFFSET != 0 {
                    let sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, a[c]);
                    init[c] = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
                }
            }
            for r in 0..R {
                let (wv, dw, mw) = F::load(w.add(r * row_bytes + b * F::BYTES), two);
                for c in 0..C {
                    let dot = _mm512_dpbusd_epi32(init[c], wv, a[c]);
                    acc[r][c] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(dot),
                        _mm512_mul_ps(dw, dx[c]),
                        acc[r][c],
                    );
                    if F::MIN {
                        acc[r][c] = _mm512_fmadd_ps(mw, sx[c], acc[r][c]);
                    }
                }
            }
            b += 2;
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, _mm512_reduce_add_ps(acc[r][c]));
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn qgemm512<F: Fmt512>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    let wp = w.as_ptr();
    for_tiles(rows, acts.rows(), |r, c, nr, nc| unsafe {
        let p = wp.add(r * row_bytes);
        match (nr, nc) {
            (4, 4) => qtile512::<F, 4, 4>(p, row_bytes, &acts, c, out, r0 + r),
            (4, _) => qtile512::<F, 4, 1>(p, row_bytes, &acts, c, out, r0 + r),
            (_, 4) => qtile512::<F, 1, 4>(p, row_bytes, &acts, c, out, r0 + r),
            _ => qtile512::<F, 1, 1>(p, row_bytes, &acts, c, out, r0 + r),
        }
    });
}

/// # Safety
/// The CPU must have the AVX-512 level; arguments as in [`super::qgemm`].
pub unsafe fn qgemm_avx512(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    let split = acts.rows() == 1 && acts.nb >= 16 && acts.split.len() >= split8_len(acts.nb);
    unsafe {
        match dtype {
            DType::Q4_0 if split && has_vbmi() => {
                gemv512_split::<Q40, _>(w, row_bytes, rows, acts, out, r0)
            }
            DType::Q4_1 if split && has_vbmi() => {
                gemv512_split::<Q41, _>(w, row_bytes, rows, acts, out, r0)
            }
            DType::Q4_0 => qgemm512::<Q40>(w, row_bytes, rows, acts, out, r0),
            DType::Q4_1 => qgemm512::<Q41>(w, row_bytes, rows, acts, out, r0),
            DType::Q8_0 => qgemm512::<Q80>(w, row_bytes, rows, acts, out, r0),
            other => panic!("qgemm on {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// AVX2 quantised GEMM, one block per register.

trait Fmt256 {
    const BYTES: usize;
    const OFFSET: u8;
    const MIN: bool;
    /// Weight bytes in activation order, d and m as f32.
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32);
    /// Σ w·a per 32-bit lane (before the offset correction).
    unsafe fn idot(w: __m256i, a: __m256i) -> __m256i;
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(b: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(b as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn maddubs_sum(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles256(w: __m128i) -> __m256i {
    let y = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(w), _mm_srli_epi16::<4>(w));
    _mm256_and_si256(y, _mm256_set1_epi8(0x0F))
}

impl Fmt256 for Q40 {
    const BYTES: usize = 18;
    const OFFSET: u8 = 8;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        unsafe {
            (
                nibbles256(_mm_loadu_si128(p.add(2) as *const __m128i)),
                f16_to_f32(read_u16(p)),
                0.0,
            )
        }
    }
    #[inline(always)]
    unsafe fn idot(w: __m256i, a: __m256i) -> __m256i {
        unsafe { maddubs_sum(w, a) }
    }
}

impl Fmt256 for Q41 {
    const BYTES: usize = 20;
    const OFFSET: u8 = 0;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        unsafe {
            (
                nibbles256(_mm_loadu_si128(p.add(4) as *const __m128i)),
                f16_to_f32(read_u16(p)),
                f16_to_f32(read_u16(p.add(2))),
            )
        }
    }
    #[inline(always)]
    unsafe fn idot(w: __m256i, a: __m256i) -> __m256i {
        unsafe { maddubs_sum(w, a) }
    }
}

impl Fmt256 for Q80 {
    const BYTES: usize = 34;
    const OFFSET: u8 = 0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        unsafe {
            (
                _mm256_loadu_si256(p.add(2) as *const __m256i),
                f16_to_f32(read_u16(p)),
                0.0,
            )
        }
    }
    #[inline(always)]
    unsafe fn idot(w: __m256i, a: __m256i) -> __m256i {
        // |w|·(a·sign(w)): both factors fit vpmaddubsw without saturating (127·127·2).
        unsafe { maddubs_sum(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)) }
    }
}

#[inline(always)]
unsafe fn qtile256<F: Fmt256, const R: usize, const C: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &Q8Acts,
    t0: usize,
    out: OutPtr,
    n0: usize,
) {
    unsafe {
        let nb = acts.nb;
        let k = nb * QK;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let offset = _mm256_set1_epi8(F::OFFSET as i8);
        for b in 0..nb {
            let mut a = [_mm256_setzero_si256(); C];
            let mut dx = [0.0f32; C];
            let mut corr = [_mm256_setzero_si256(); C];
            let mut sx = [_mm256_setzero_ps(); C];
            for c in 0..C {
                let t = t0 + c;
                a[c] = _mm256_loadu_si256(acts.qs.as_ptr().add(t * k + b * QK) as *const __m256i);
                dx[c] = *acts.d.get_unchecked(t * nb + b);
                if F::MIN {
                    sx[c] = _mm256_set1_ps(*acts.s.get_unchecked(t * nb + b) * 0.125);
                }
                if F::OFFSET != 0 {
                    corr[c] = maddubs_sum(offset, a[c]);
                }
            }
            for r in 0..R {
                let (wv, dw, m) = F::load(w.add(r * row_bytes + b * F::BYTES));
                let mv = _mm256_set1_ps(m);
                for c in 0..C {
                    let mut dot = F::idot(wv, a[c]);
                    if F::OFFSET != 0 {
                        dot = _mm256_sub_epi32(dot, corr[c]);
                    }
                    acc[r][c] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(dot),
                        _mm256_set1_ps(dw * dx[c]),
                        acc[r][c],
                    );
                    if F::MIN {
                        acc[r][c] = _mm256_fmadd_ps(mv, sx[c], acc[r][c]);
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, hsum_256(acc[r][c]));
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn qgemm256<F: Fmt256>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    let wp = w.as_ptr();
    for_tiles(rows, acts.rows(), |r, c, nr, nc| unsafe {
        let p = wp.add(r * row_bytes);
        match (nr, nc) {
            (4, 4) => qtile256::<F, 4, 4>(p, row_bytes, &acts, c, out, r0 + r),
            (4, _) => qtile256::<F, 4, 1>(p, row_bytes, &acts, c, out, r0 + r),
            (_, 4) => qtile256::<F, 1, 4>(p, row_bytes, &acts, c, out, r0 + r),
            _ => qtile256::<F, 1, 1>(p, row_bytes, &acts, c, out, r0 + r),
        }
    });
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; arguments as in [`super::qgemm`].
pub unsafe fn qgemm_avx2(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: Q8Acts,
    out: OutPtr,
    r0: usize,
) {
    unsafe {
        match dtype {
            DType::Q4_0 => qgemm256::<Q40>(w, row_bytes, rows, acts, out, r0),
            DType::Q4_1 => qgemm256::<Q41>(w, row_bytes, rows, acts, out, r0),
            DType::Q8_0 => qgemm256::<Q80>(w, row_bytes, rows, acts, out, r0),
            other => panic!("qgemm on {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// f32 GEMM (weights already f32, or a converted panel): tiles of dot products.

/// How a float weight row is read, 16 (AVX-512) or 8 (AVX2) values at a time.
trait FloatW {
    const SIZE: usize;
    unsafe fn load16(p: *const u8) -> __m512;
    unsafe fn load16_masked(p: *const u8, n: usize) -> __m512;
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn get(p: *const u8) -> f32;
}

struct WF32;
struct WF16;
struct WBF16;

impl FloatW for WF32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        unsafe { _mm512_loadu_ps(p as *const f32) }
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const u8, n: usize) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps((1u32 << n).wrapping_sub(1) as u16, p as *const f32) }
    }
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        unsafe { _mm256_loadu_ps(p as *const f32) }
    }
    #[inline(always)]
    unsafe fn get(p: *const u8) -> f32 {
        unsafe { std::ptr::read_unaligned(p as *const f32) }
    }
}

impl FloatW for WF16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const u8, n: usize) -> __m512 {
        unsafe {
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                (1u32 << n).wrapping_sub(1) as u16,
                p as *const i16,
            ))
        }
    }
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn get(p: *const u8) -> f32 {
        unsafe { f16_to_f32(read_u16(p)) }
    }
}

impl FloatW for WBF16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load16(p: *const u8) -> __m512 {
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p as *const __m256i),
            )))
        }
    }
    #[inline(always)]
    unsafe fn load16_masked(p: *const u8, n: usize) -> __m512 {
        unsafe {
            let raw = _mm256_maskz_loadu_epi16((1u32 << n).wrapping_sub(1) as u16, p as *const i16);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
        }
    }
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p as *const __m128i),
            )))
        }
    }
    #[inline(always)]
    unsafe fn get(p: *const u8) -> f32 {
        unsafe { f32::from_bits((read_u16(p) as u32) << 16) }
    }
}

#[inline(always)]
unsafe fn ftile512<W: FloatW, const R: usize, const C: usize>(
    w: *const u8,
    x: *const f32,
    k: usize,
    out: OutPtr,
    t0: usize,
    n0: usize,
) {
    unsafe {
        let rb = k * W::SIZE;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut i = 0;
        while i + 16 <= k {
            let xv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(x.add(c * k + i)));
            for r in 0..R {
                let wv = W::load16(w.add(r * rb + i * W::SIZE));
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
            i += 16;
        }
        if i < k {
            let m: __mmask16 = (1u32 << (k - i)).wrapping_sub(1) as u16;
            let xv: [__m512; C] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(m, x.add(c * k + i)));
            for r in 0..R {
                let wv = W::load16_masked(w.add(r * rb + i * W::SIZE), k - i);
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, _mm512_reduce_add_ps(acc[r][c]));
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn fgemm512<W: FloatW>(w: &[u8], rows: usize, x: &[f32], k: usize, out: OutPtr, r0: usize) {
    let t_rows = x.len() / k.max(1);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let rb = k * W::SIZE;
    for_tiles(rows, t_rows, |r, c, nr, nc| unsafe {
        let (w, x) = (wp.add(r * rb), xp.add(c * k));
        match (nr, nc) {
            (4, 4) => ftile512::<W, 4, 4>(w, x, k, out, c, r0 + r),
            (4, _) => ftile512::<W, 4, 1>(w, x, k, out, c, r0 + r),
            (_, 4) => ftile512::<W, 1, 4>(w, x, k, out, c, r0 + r),
            _ => ftile512::<W, 1, 1>(w, x, k, out, c, r0 + r),
        }
    });
}

/// Float weights of `dtype` (F32, F16, BF16) as stored, converted in registers.
///
/// # Safety
/// The CPU must have the AVX-512 level; `w` holds `rows × k` values of `dtype`; output as
/// in [`super::fgemm`].
pub unsafe fn fgemm_native_avx512(
    dtype: DType,
    w: &[u8],
    rows: usize,
    x: &[f32],
    k: usize,
    out: OutPtr,
    r0: usize,
) {
    unsafe {
        match dtype {
            DType::F32 => fgemm512::<WF32>(w, rows, x, k, out, r0),
            DType::F16 => fgemm512::<WF16>(w, rows, x, k, out, r0),
            DType::BF16 => fgemm512::<WBF16>(w, rows, x, k, out, r0),
            other => panic!("fgemm on {other}"),
        }
    }
}

/// # Safety
/// The CPU must have the AVX-512 level; arguments as in [`super::fgemm`].
pub unsafe fn fgemm_avx512(w: &[f32], rows: usize, x: &[f32], k: usize, out: OutPtr, r0: usize) {
    unsafe { fgemm512::<WF32>(bytemuck::cast_slice(w), rows, x, k, out, r0) }
}

#[inline(always)]
unsafe fn ftile256<W: FloatW, const R: usize, const C: usize>(
    w: *const u8,
    x: *const f32,
    k: usize,
    out: OutPtr,
    t0: usize,
    n0: usize,
) {
    unsafe {
        let rb = k * W::SIZE;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 0;
        while i + 8 <= k {
            let xv: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(x.add(c * k + i)));
            for r in 0..R {
                let wv = W::load8(w.add(r * rb + i * W::SIZE));
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
            i += 8;
        }
        let mut tail = [[0.0f32; C]; R];
        while i < k {
            for r in 0..R {
                let wv = W::get(w.add(r * rb + i * W::SIZE));
                for c in 0..C {
                    tail[r][c] += wv * *x.add(c * k + i);
                }
            }
            i += 1;
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, hsum_256(acc[r][c]) + tail[r][c]);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fgemm256<W: FloatW>(w: &[u8], rows: usize, x: &[f32], k: usize, out: OutPtr, r0: usize) {
    let t_rows = x.len() / k.max(1);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let rb = k * W::SIZE;
    for_tiles(rows, t_rows, |r, c, nr, nc| unsafe {
        let (w, x) = (wp.add(r * rb), xp.add(c * k));
        match (nr, nc) {
            (4, 4) => ftile256::<W, 4, 4>(w, x, k, out, c, r0 + r),
            (4, _) => ftile256::<W, 4, 1>(w, x, k, out, c, r0 + r),
            (_, 4) => ftile256::<W, 1, 4>(w, x, k, out, c, r0 + r),
            _ => ftile256::<W, 1, 1>(w, x, k, out, c, r0 + r),
        }
    });
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; arguments as in [`fgemm_native_avx512`].
pub unsafe fn fgemm_native_avx2(
    dtype: DType,
    w: &[u8],
    rows: usize,
    x: &[f32],
    k: usize,
    out: OutPtr,
    r0: usize,
) {
    unsafe {
        match dtype {
            DType::F32 => fgemm256::<WF32>(w, rows, x, k, out, r0),
            DType::F16 => fgemm256::<WF16>(w, rows, x, k, out, r0),
            DType::BF16 => fgemm256::<WBF16>(w, rows, x, k, out, r0),
            other => panic!("fgemm on {other}"),
        }
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; arguments as in [`super::fgemm`].
pub unsafe fn fgemm_avx2(w: &[f32], rows: usize, x: &[f32], k: usize, out: OutPtr, r0: usize) {
    unsafe { fgemm256::<WF32>(bytemuck::cast_slice(w), rows, x, k, out, r0) }
}

// ---------------------------------------------------------------------------------------
// int16 activations (the accurate mode, `POCKETVLM_ACT=int16`): quantisation and GEMMs.

/// # Safety
/// The CPU must have AVX2, FMA and F16C; slices as in [`super::quantize_rows16`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize16_avx2(x: &[f32], qs: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    let nb = d.len();
    assert!(x.len() >= nb * QK && qs.len() >= nb * QK && s.len() >= nb);
    let abs_mask = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_epi32(-32768), _mm256_set1_epi32(32767));
    for b in 0..nb {
        // SAFETY: block b is inside x and qs (checked above).
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m01 = _mm256_max_ps(
                _mm256_andnot_ps(abs_mask, v[0]),
                _mm256_andnot_ps(abs_mask, v[1]),
            );
            let m23 = _mm256_max_ps(
                _mm256_andnot_ps(abs_mask, v[2]),
                _mm256_andnot_ps(abs_mask, v[3]),
            );
            let m = _mm256_max_ps(m01, m23);
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            let amax = _mm_cvtss_f32(m);
            let dd = amax / 32767.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                let qi = _mm256_cvttps_epi32(round_away(_mm256_mul_ps(v[i], idv)));
                _mm256_min_epi32(_mm256_max_epi32(qi, lo), hi)
            });
            let sum = hsum_epi32_256(_mm256_add_epi32(
                _mm256_add_epi32(q[0], q[1]),
                _mm256_add_epi32(q[2], q[3]),
            ));
            let o = qs.as_mut_ptr().add(b * QK) as *mut __m256i;
            let p01 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[0], q[1]));
            let p23 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(o, p01);
            _mm256_storeu_si256(o.add(1), p23);
            d[b] = dd;
            s[b] = dd * sum as f32;
        }
    }
}

/// A weight block format widened to 32 × i16 (activation element order).
trait Fmt16 {
    const BYTES: usize;
    const MIN: bool;
    /// Weight bytes as 32 bytes in element order (signed for Q8_0, 0..15 for Q4).
    unsafe fn bytes(p: *const u8) -> __m256i;
    /// Whether `bytes` are signed.
    const SIGNED: bool;
    /// Subtracted from each widened weight.
    const OFFSET: i16;
    /// d and m.
    unsafe fn scales(p: *const u8) -> (f32, f32);
    /// The block's 32 weights as i16 (elements 0–15, then 16–31), before `OFFSET`.
    #[inline(always)]
    unsafe fn words(p: *const u8) -> (__m256i, __m256i) {
        unsafe {
            let raw = Self::bytes(p);
            let (lo, hi) = (
                _mm256_castsi256_si128(raw),
                _mm256_extracti128_si256::<1>(raw),
            );
            if Self::SIGNED {
                (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi))
            } else {
                (_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi))
            }
        }
    }
}

/// A Q4 block's 16 nibble bytes at `p` as i16: low nibbles (elements 0–15), high nibbles
/// (16–31) — one widening instead of a split, an insert, an extract and two widenings.
#[inline(always)]
unsafe fn nibble_words(p: *const u8) -> (__m256i, __m256i) {
    unsafe {
        let z = _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i));
        (
            _mm256_and_si256(z, _mm256_set1_epi16(0x0F)),
            _mm256_srli_epi16::<4>(z),
        )
    }
}

impl Fmt16 for Q40 {
    const BYTES: usize = 18;
    const MIN: bool = false;
    const SIGNED: bool = false;
    const OFFSET: i16 = 8;
    #[inline(always)]
    unsafe fn bytes(p: *const u8) -> __m256i {
        unsafe { nibbles256(_mm_loadu_si128(p.add(2) as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn words(p: *const u8) -> (__m256i, __m256i) {
        unsafe { nibble_words(p.add(2)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        unsafe { (f16_to_f32(read_u16(p)), 0.0) }
    }
}

impl Fmt16 for Q41 {
    const BYTES: usize = 20;
    const MIN: bool = true;
    const SIGNED: bool = false;
    const OFFSET: i16 = 0;
    #[inline(always)]
    unsafe fn bytes(p: *const u8) -> __m256i {
        unsafe { nibbles256(_mm_loadu_si128(p.add(4) as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn words(p: *const u8) -> (__m256i, __m256i) {
        unsafe { nibble_words(p.add(4)) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        unsafe { (f16_to_f32(read_u16(p)), f16_to_f32(read_u16(p.add(2)))) }
    }
}

impl Fmt16 for Q80 {
    const BYTES: usize = 34;
    const MIN: bool = false;
    const SIGNED: bool = true;
    const OFFSET: i16 = 0;
    #[inline(always)]
    unsafe fn bytes(p: *const u8) -> __m256i {
        unsafe { _mm256_loadu_si256(p.add(2) as *const __m256i) }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        unsafe { (f16_to_f32(read_u16(p)), 0.0) }
    }
}

#[inline(always)]
unsafe fn q16tile512<F: Fmt16, const R: usize, const C: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &super::Q16Acts,
    t0: usize,
    out: OutPtr,
    n0: usize,
) {
    unsafe {
        let nb = acts.nb;
        let k = nb * QK;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for b in 0..nb {
            let mut a = [_mm512_setzero_si512(); C];
            let mut dx = [_mm512_setzero_ps(); C];
            let mut sx = [_mm512_setzero_ps(); C];
            for c in 0..C {
                let t = t0 + c;
                a[c] = _mm512_loadu_si512(acts.qs.as_ptr().add(t * k + b * QK) as *const __m512i);
                dx[c] = _mm512_set1_ps(*acts.d.get_unchecked(t * nb + b));
                if F::MIN {
                    sx[c] = _mm512_set1_ps(*acts.s.get_unchecked(t * nb + b) * (1.0 / 16.0));
                }
            }
            for r in 0..R {
                let p = w.add(r * row_bytes + b * F::BYTES);
                let raw = F::bytes(p);
                let mut wv = if F::SIGNED {
                    _mm512_cvtepi8_epi16(raw)
                } else {
                    _mm512_cvtepu8_epi16(raw)
                };
                if F::OFFSET != 0 {
                    wv = _mm512_sub_epi16(wv, _mm512_set1_epi16(F::OFFSET));
                }
                let (dw, m) = F::scales(p);
                let dwv = _mm512_set1_ps(dw);
                let mv = _mm512_set1_ps(m);
                for c in 0..C {
                    let dot = _mm512_dpwssd_epi32(_mm512_setzero_si512(), wv, a[c]);
                    acc[r][c] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(dot),
                        _mm512_mul_ps(dwv, dx[c]),
                        acc[r][c],
                    );
                    if F::MIN {
                        acc[r][c] = _mm512_fmadd_ps(mv, sx[c], acc[r][c]);
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, _mm512_reduce_add_ps(acc[r][c]));
            }
        }
    }
}

/// One weight row × one activation row (decode), two blocks per iteration: the nibbles of
/// both are expanded together and both scales converted by one instruction.
#[inline(always)]
unsafe fn q16row512<F: Fmt16 + Fmt512>(w: *const u8, acts: &super::Q16Acts, t: usize) -> f32 {
    unsafe {
        let nb = acts.nb;
        let qs = acts.qs.as_ptr().add(t * nb * QK);
        let d = acts.d.as_ptr().add(t * nb);
        let s = acts.s.as_ptr().add(t * nb);
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut corr = 0.0f32;
        let mut b = 0;
        while b + 2 <= nb {
            let p = w.add(b * <F as Fmt16>::BYTES);
            // [lo₀, hi₀, lo₁, hi₁] bytes (Q4) or the two blocks' bytes (Q8_0), plus d (and m).
            let (bytes, dw, mw) = <F as Fmt512>::load(p, true);
            let lo = _mm512_castsi512_si256(bytes);
            let hi = _mm512_extracti64x4_epi64::<1>(bytes);
            // Unsigned bytes: Q4 nibbles, or Q8_0 with its sign bit flipped (w + 128).
            let (mut w0, mut w1) = (_mm512_cvtepu8_epi16(lo), _mm512_cvtepu8_epi16(hi));
            let off = if <F as Fmt16>::SIGNED {
                128
            } else {
                <F as Fmt16>::OFFSET
            };
            if off != 0 {
                let o = _mm512_set1_epi16(off);
                w0 = _mm512_sub_epi16(w0, o);
                w1 = _mm512_sub_epi16(w1, o);
            }
            let a0 = _mm512_loadu_si512(qs.add(b * QK) as *const __m512i);
            let a1 = _mm512_loadu_si512(qs.add((b + 1) * QK) as *const __m512i);
            let dot0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w0, a0);
            let dot1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w1, a1);
            // dw = [d₀ ×8, d₁ ×8]: lane 0 and lane 8 hold the two scales.
            let dw0 = _mm512_permutexvar_ps(_mm512_setzero_si512(), dw);
            let dw1 = _mm512_permutexvar_ps(_mm512_set1_epi32(8), dw);
            acc0 = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(dot0),
                _mm512_mul_ps(dw0, _mm512_set1_ps(*d.add(b))),
                acc0,
            );
            acc1 = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(dot1),
                _mm512_mul_ps(dw1, _mm512_set1_ps(*d.add(b + 1))),
                acc1,
            );
            if <F as Fmt16>::MIN {
                let m0 = _mm_cvtss_f32(_mm512_castps512_ps128(mw));
                let m1 = _mm_cvtss_f32(_mm512_castps512_ps128(_mm512_permutexvar_ps(
                    _mm512_set1_epi32(8),
                    mw,
                )));
                corr += m0 * *s.add(b) + m1 * *s.add(b + 1);
            }
            b += 2;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + corr;
        if b < nb {
            // The odd last block through the one-block tile.
            let one = super::Q16Acts {
                qs: std::slice::from_raw_parts(qs.add(b * QK), QK),
                d: std::slice::from_raw_parts(d.add(b), 1),
                s: std::slice::from_raw_parts(s.add(b), 1),
                nb: 1,
                paired: &[],
                split: &[],
            };
            let mut v = 0.0f32;
            q16tile512::<F, 1, 1>(
                w.add(b * <F as Fmt16>::BYTES),
                0,
                &one,
                0,
                OutPtr { ptr: &mut v, ld: 1 },
                0,
            );
            sum += v;
        }
        sum
    }
}

/// How far ahead of its group the decode kernel prefetches the weight stream: the
/// hardware prefetcher stops at 4 KiB pages. On the 2-core dev VM, 1.4B Q4_0 decode ran at
/// 47.4–48.6 tok/s without it and 48.8–52.6 with it (1024 bytes ahead: 49.2; 4096: 53.0).
const PREFETCH_AHEAD: usize = 2048;

/// Prefetches the `len` bytes from `p` (a hint: past the weights' end it is harmless).
#[inline(always)]
unsafe fn prefetch_lines(p: *const u8, len: usize) {
    let mut o = 0;
    while o < len {
        // SAFETY: prefetching never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o) as *const i8) };
        o += 64;
    }
}

/// Adds a 16-block group's scaled dot to `acc`: `dot` holds block `b0 + j`'s integer sum
/// `Σ q·a` in lane `j`, `d16`/`m16` the blocks' f16 `d_w` (and Q4_1's `m_w`).
/// `Σ d_w (q − offset) · d_x a = d_w · (d_x Σ q a − offset · s)`, plus `m_w · s` (Q4_1).
#[inline(always)]
unsafe fn scale_group<F: Fmt16>(
    acc: __m512,
    dot: __m512i,
    (d, s): (&[f32], &[f32]),
    b0: usize,
    d16: __m256i,
    m16: __m256i,
) -> __m512 {
    unsafe {
        let dot = _mm512_cvtepi32_ps(dot);
        let dx = _mm512_loadu_ps(d.as_ptr().add(b0));
        let sx = _mm512_loadu_ps(s.as_ptr().add(b0));
        let dw = _mm512_cvtph_ps(d16);
        let t = if F::OFFSET != 0 {
            let offset = _mm512_set1_ps(F::OFFSET as f32);
            _mm512_fmsub_ps(dot, dx, _mm512_mul_ps(offset, sx))
        } else {
            _mm512_mul_ps(dot, dx)
        };
        let acc = _mm512_fmadd_ps(dw, t, acc);
        if F::MIN {
            _mm512_fmadd_ps(_mm512_cvtph_ps(m16), sx, acc)
        } else {
            acc
        }
    }
}

/// A grouped decode kernel's row total: `acc`'s lanes plus the blocks after the last
/// whole 16 (through [`q16row512`]).
#[inline(always)]
unsafe fn finish_row<F: Fmt16 + Fmt512, A: DecodeActs>(acc: __m512, w: *const u8, acts: &A) -> f32 {
    let (_, nb, _) = acts.parts();
    let done = nb / 16 * 16;
    let tail = if done < nb {
        // SAFETY: blocks done..nb are inside the row.
        unsafe { acts.tail::<F>(w.add(done * <F as Fmt16>::BYTES), done) }
    } else {
        0.0
    };
    // SAFETY: the caller's target features include AVX-512.
    tail + unsafe { _mm512_reduce_add_ps(acc) }
}

/// The activation row of a grouped decode kernel ([`row512_split`], and [`finish_row`]'s
/// tail): int16 (split into high and low bytes, or in pair order) or int8.
trait DecodeActs {
    /// int16 (`h` and `l` bytes, 256 per quad) rather than int8 (128 per quad).
    const WIDE: bool;
    /// The split bytes (empty outside [`row512_split`]), the row's blocks and their
    /// scales `(d, s)`.
    fn parts(&self) -> (&[u8], usize, (&[f32], &[f32]));
    /// The dot of the row's blocks from `first` on (at `w`) by the one-row kernel.
    unsafe fn tail<F: Fmt16 + Fmt512>(&self, w: *const u8, first: usize) -> f32;
}

impl DecodeActs for super::Q16Acts<'_> {
    const WIDE: bool = true;
    fn parts(&self) -> (&[u8], usize, (&[f32], &[f32])) {
        (self.split, self.nb, (self.d, self.s))
    }
    #[inline(always)]
    unsafe fn tail<F: Fmt16 + Fmt512>(&self, w: *const u8, first: usize) -> f32 {
        unsafe { q16row512::<F>(w, &self.blocks_from(first), 0) }
    }
}

impl DecodeActs for Q8Acts<'_> {
    const WIDE: bool = false;
    fn parts(&self) -> (&[u8], usize, (&[f32], &[f32])) {
        (self.split, self.nb, (self.d, self.s))
    }
    #[inline(always)]
    unsafe fn tail<F: Fmt16 + Fmt512>(&self, w: *const u8, first: usize) -> f32 {
        let mut v = 0.0f32;
        let out = OutPtr { ptr: &mut v, ld: 1 };
        unsafe { qtile512::<F, 1, 1>(w, 0, &self.blocks_from(first), 0, out, 0) };
        v
    }
}

/// A weight format whose blocks widen two at a time into the pair order of
/// [`super::pair_blocks16`] (decode kernel).
trait Pair16: Fmt16 {
    /// Where a group of 16 blocks keeps its f16 heads, for [`heads_vbmi`].
    const HEADS: HeadPlan;
    /// The blocks at `p` and `p + BYTES` as 32 × i16 each: elements 0–15 of both blocks,
    /// and elements 16–31 of both (the first block in lanes 0–15).
    unsafe fn pair(p: *const u8) -> (__m512i, __m512i);
}

/// One `vpermt2b` of [`heads_vbmi`]: a 128-byte window of the group from byte `start`,
/// the source byte of each destination byte, and which destination bytes it fills.
#[derive(Clone, Copy)]
struct HeadWindow {
    start: usize,
    idx: [u8; 64],
    mask: u64,
}

/// The windows that cover the heads of 16 consecutive blocks (at most 5: Q8_0).
struct HeadPlan {
    windows: [HeadWindow; 5],
    len: usize,
}

/// Plans [`heads_vbmi`] for 16 blocks of `stride` bytes whose first `head` bytes (2: d;
/// 4: d then m) are f16 values: destination word `j` gets block `j`'s d, word `16 + j` its
/// m. Each window is 128 bytes inside the group (so no read passes the group's end) and
/// takes the blocks that fit whole.
const fn head_plan(stride: usize, head: usize) -> HeadPlan {
    let empty = HeadWindow {
        start: 0,
        idx: [0; 64],
        mask: 0,
    };
    let mut windows = [empty; 5];
    let mut len = 0;
    let mut j = 0;
    while j < 16 {
        let mut start = j * stride;
        if start + 128 > 16 * stride {
            start = 16 * stride - 128;
        }
        let mut w = empty;
        w.start = start;
        while j < 16 && j * stride + head <= start + 128 {
            let at = j * stride - start;
            let mut b = 0;
            while b < head {
                // Bytes 0–1 (d) to word j, bytes 2–3 (m) to word 16 + j.
                let dst = (b / 2) * 32 + 2 * j + b % 2;
                w.idx[dst] = (at + b) as u8;
                w.mask |= 1 << dst;
                b += 1;
            }
            j += 1;
        }
        windows[len] = w;
        len += 1;
    }
    HeadPlan { windows, len }
}

/// The f16 heads of the 16 blocks from `p` (see [`head_plan`]): a few byte permutes of
/// bytes the kernel reads anyway, instead of a 16-lane gather (~30% of the Q4 decode
/// kernel's time on Zen 5).
#[inline(always)]
unsafe fn heads_vbmi(p: *const u8, plan: &HeadPlan) -> __m512i {
    unsafe {
        let mut out = _mm512_setzero_si512();
        for w in &plan.windows[..plan.len] {
            let a = _mm512_loadu_si512(p.add(w.start) as *const __m512i);
            let b = _mm512_loadu_si512(p.add(w.start + 64) as *const __m512i);
            let idx = _mm512_loadu_si512(w.idx.as_ptr() as *const __m512i);
            out = _mm512_or_si512(out, _mm512_maskz_permutex2var_epi8(w.mask, a, idx, b));
        }
        out
    }
}

/// Two blocks' 16 nibble bytes (at `p` and `p + stride`) as (low nibbles, high nibbles).
#[inline(always)]
unsafe fn nibble_pair(p: *const u8, stride: usize) -> (__m512i, __m512i) {
    unsafe {
        let y = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(p as *const __m128i)),
            _mm_loadu_si128(p.add(stride) as *const __m128i),
        );
        let z = _mm512_cvtepu8_epi16(y);
        (
            _mm512_and_si512(z, _mm512_set1_epi16(0x0F)),
            _mm512_srli_epi16::<4>(z),
        )
    }
}

impl Pair16 for Q40 {
    const HEADS: HeadPlan = head_plan(18, 2);
    #[inline(always)]
    unsafe fn pair(p: *const u8) -> (__m512i, __m512i) {
        unsafe { nibble_pair(p.add(2), 18) }
    }
}

impl Pair16 for Q41 {
    const HEADS: HeadPlan = head_plan(20, 4);
    #[inline(always)]
    unsafe fn pair(p: *const u8) -> (__m512i, __m512i) {
        unsafe { nibble_pair(p.add(4), 20) }
    }
}

impl Pair16 for Q80 {
    const HEADS: HeadPlan = head_plan(34, 2);
    #[inline(always)]
    unsafe fn pair(p: *const u8) -> (__m512i, __m512i) {
        unsafe {
            let half = |o: usize| {
                _mm512_cvtepi8_epi16(_mm256_inserti128_si256::<1>(
                    _mm256_castsi128_si256(_mm_loadu_si128(p.add(2 + o) as *const __m128i)),
                    _mm_loadu_si128(p.add(36 + o) as *const __m128i),
                ))
            };
            (half(0), half(16))
        }
    }
}

/// Eight pair dot products (`v[p]`: block 2p's partial sums in lanes 0–7, block 2p+1's in
/// lanes 8–15) reduced to one vector of 16 block sums, lane j for block j.
#[inline(always)]
unsafe fn reduce_pairs(v: &[__m512i; 8]) -> __m512i {
    unsafe {
        // Blocks 4q..4q+4, one per 128-bit lane, 4 partial sums each.
        let u: [__m512i; 4] = std::array::from_fn(|q| {
            let (x, y) = (v[2 * q], v[2 * q + 1]);
            _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(x, y),
            )
        });
        // 128-bit lane l: blocks l and 4+l (from u0, u1), two partial sums each; likewise
        // blocks 8+l and 12+l.
        let w: [__m512i; 2] = std::array::from_fn(|h| {
            let (x, y) = (u[2 * h], u[2 * h + 1]);
            _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y))
        });
        // 128-bit lane l: blocks l, 4+l, 8+l, 12+l.
        let (x, y) = (_mm512_castsi512_ps(w[0]), _mm512_castsi512_ps(w[1]));
        let r = _mm512_add_epi32(
            _mm512_castps_si512(_mm512_shuffle_ps::<0b10_00_10_00>(x, y)),
            _mm512_castps_si512(_mm512_shuffle_ps::<0b11_01_11_01>(x, y)),
        );
        // Lane 4l + m holds block 4m + l.
        _mm512_permutexvar_epi32(
            _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
            r,
        )
    }
}

/// One weight row × one activation row (decode), 16 blocks at a time: the integer dots of
/// each pair of blocks run over the pair-ordered activations, the 16 blocks' sums are
/// reduced together, and only then scaled — by vectors of the 16 weight scales (byte
/// permutes with VBMI, else a gather) and activation scales — instead of per block. The blocks after the last whole 16 go
/// through [`q16row512`].
#[inline(always)]
unsafe fn q16row512_grouped<F: Pair16 + Fmt512, const VBMI: bool>(
    w: *const u8,
    acts: &super::Q16Acts,
) -> f32 {
    unsafe {
        let nb = acts.nb;
        let groups = nb / 16;
        debug_assert!(acts.paired.len() >= groups * 16 * QK);
        let bytes = <F as Fmt16>::BYTES;
        let pa = acts.paired.as_ptr();
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(bytes as i32),
        );
        let mut acc = _mm512_setzero_ps();
        for g in 0..groups {
            let b0 = g * 16;
            // The rows of a panel are one contiguous stream; fetch the bytes PREFETCH_AHEAD
            // past this group.
            prefetch_lines(w.wrapping_add(b0 * bytes + PREFETCH_AHEAD), 16 * bytes);
            let mut v = [_mm512_setzero_si512(); 8];
            for (p, vp) in v.iter_mut().enumerate() {
                let b = b0 + 2 * p;
                let (lo, hi) = F::pair(w.add(b * bytes));
                let a = pa.add(b * QK);
                let dot = _mm512_dpwssd_epi32(
                    _mm512_setzero_si512(),
                    lo,
                    _mm512_loadu_si512(a as *const __m512i),
                );
                *vp = _mm512_dpwssd_epi32(dot, hi, _mm512_loadu_si512(a.add(32) as *const __m512i));
            }
            // The blocks' d (and Q4_1's m) as 16 f16 values each.
            let (d16, m16) = if VBMI {
                let h = heads_vbmi(w.add(b0 * bytes), &F::HEADS);
                (_mm512_castsi512_si256(h), _mm512_extracti64x4_epi64::<1>(h))
            } else {
                // Each block's first 4 bytes: d and (Q4_1) m.
                let head = _mm512_i32gather_epi32::<1>(offsets, w.add(b0 * bytes) as _);
                (
                    _mm512_cvtepi32_epi16(head),
                    _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head)),
                )
            };
            acc = scale_group::<F>(acc, reduce_pairs(&v), (acts.d, acts.s), b0, d16, m16);
        }
        finish_row::<F, _>(acc, w, acts)
    }
}

/// A Q4 format for [`row512_split`].
trait Nib16: Pair16 {
    /// The byte permutes that gather each quad of a 16-block group's nibble bytes (a
    /// static: an associated constant would be copied to the stack at each use).
    fn quads() -> &'static [NibWindow; 4];
}

/// One `vpermt2b` of [`row512_split`]: a 128-byte window of a 16-block group from
/// byte `start` and, for destination byte `16j + i`, the window byte holding nibble byte
/// `i` of block `4q + j`.
#[derive(Clone, Copy)]
struct NibWindow {
    start: usize,
    idx: [u8; 64],
}

/// Plans the four nibble windows of a 16-block group of `stride`-byte blocks whose nibble
/// bytes start at `qs_at`. Each window lies inside the group (so no read passes its end).
const fn nib_plan(stride: usize, qs_at: usize) -> [NibWindow; 4] {
    let mut out = [NibWindow {
        start: 0,
        idx: [0; 64],
    }; 4];
    let mut q = 0;
    while q < 4 {
        let mut start = 4 * q * stride;
        if start + 128 > 16 * stride {
            start = 16 * stride - 128;
        }
        out[q].start = start;
        let mut d = 0;
        while d < 64 {
            let at = (4 * q + d / 16) * stride + qs_at + d % 16 - start;
            assert!(at < 128);
            out[q].idx[d] = at as u8;
            d += 1;
        }
        q += 1;
    }
    out
}

static Q40_QUADS: [NibWindow; 4] = nib_plan(18, 2);
static Q41_QUADS: [NibWindow; 4] = nib_plan(20, 4);

impl Nib16 for Q40 {
    #[inline(always)]
    fn quads() -> &'static [NibWindow; 4] {
        &Q40_QUADS
    }
}

impl Nib16 for Q41 {
    #[inline(always)]
    fn quads() -> &'static [NibWindow; 4] {
        &Q41_QUADS
    }
}

/// Four quads' integer dots (`c[q]`: block `4q + j`'s four partial sums in lanes
/// `4j … 4j+3`) reduced to one vector of 16 block sums, lane `b` for block `b`.
#[inline(always)]
unsafe fn reduce_quads(c: &[__m512i; 4]) -> __m512i {
    unsafe {
        // 128-bit lane j: [c0, c1, c0, c1] partial pairs, then [c2, c3, c2, c3].
        let t0 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(c[0], c[1]),
            _mm512_unpackhi_epi32(c[0], c[1]),
        );
        let t1 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(c[2], c[3]),
            _mm512_unpackhi_epi32(c[2], c[3]),
        );
        // Lane 4j + q holds block 4q + j.
        let u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
        _mm512_permutexvar_epi32(
            _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
            u,
        )
    }
}

/// One Q4 weight row × one activation row (decode) on AVX-512 VBMI, 16 blocks at a time,
/// with the same result as [`q16row512_grouped`] bit for bit: the integer dot of each
/// block is exact either way. Here one byte permute gathers four blocks' nibble bytes into
/// a register, and the int16 activations come split into bytes (`a = 256·h + l`,
/// [`super::split_blocks16`]), so `vpdpbusd` multiplies the unsigned nibbles by the signed
/// `h` and the unsigned `l` by the nibbles (signed, being 0–15): four `vpdpbusd` per 128
/// weights instead of widening the nibbles to 16 bits for eight `vpdpwssd`-equivalents.
/// (Two rows at a time, sharing the activation loads, measured no faster.)
///
/// With int8 activations ([`super::split_blocks8`]) only the `h` half runs: ggml's
/// numerics at two `vpdpbusd` per 128 weights.
#[inline(always)]
unsafe fn row512_split<F: Nib16 + Fmt512, A: DecodeActs>(w: *const u8, acts: &A) -> f32 {
    unsafe {
        let (split, nb, scales) = acts.parts();
        let groups = nb / 16;
        let bytes = <F as Fmt16>::BYTES;
        let quad_bytes = if A::WIDE { 256 } else { 128 };
        debug_assert!(split.len() >= groups * 4 * quad_bytes);
        let sa = split.as_ptr();
        let low = _mm512_set1_epi8(0x0F);
        let quads = F::quads();
        let mut acc = _mm512_setzero_ps();
        for g in 0..groups {
            let b0 = g * 16;
            let base = w.add(b0 * bytes);
            // As in `q16row512_grouped`: the hardware prefetcher stops at page ends.
            prefetch_lines(base.wrapping_add(PREFETCH_AHEAD), 16 * bytes);
            // No closures here: a closure does not inherit this kernel's target features,
            // and intrinsics left un-inlined in one ran decode at a tenth of its speed.
            let mut c = [_mm512_setzero_si512(); 4];
            for (q, cq) in c.iter_mut().enumerate() {
                let win = &quads[q];
                let nib = _mm512_permutex2var_epi8(
                    _mm512_loadu_si512(base.add(win.start) as *const __m512i),
                    _mm512_loadu_si512(win.idx.as_ptr() as *const __m512i),
                    _mm512_loadu_si512(base.add(win.start + 64) as *const __m512i),
                );
                let lo = _mm512_and_si512(nib, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(nib), low);
                let a = sa.add((g * 4 + q) * quad_bytes) as *const __m512i;
                let zero = _mm512_setzero_si512();
                let h = _mm512_dpbusd_epi32(zero, lo, _mm512_loadu_si512(a));
                let h = _mm512_dpbusd_epi32(h, hi, _mm512_loadu_si512(a.add(1)));
                *cq = if A::WIDE {
                    let l = _mm512_dpbusd_epi32(zero, _mm512_loadu_si512(a.add(2)), lo);
                    let l = _mm512_dpbusd_epi32(l, _mm512_loadu_si512(a.add(3)), hi);
                    _mm512_add_epi32(_mm512_slli_epi32::<8>(h), l)
                } else {
                    h
                };
            }
            let h = heads_vbmi(base, &F::HEADS);
            let (d16, m16) = (_mm512_castsi512_si256(h), _mm512_extracti64x4_epi64::<1>(h));
            acc = scale_group::<F>(acc, reduce_quads(&c), scales, b0, d16, m16);
        }
        finish_row::<F, A>(acc, w, acts)
    }
}

/// [`row512_split`] over `rows` rows (AVX-512 VBMI; Q4_0 and Q4_1; int16 or int8
/// activations).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn gemv512_split<F: Nib16 + Fmt512, A: DecodeActs>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: A,
    out: OutPtr,
    r0: usize,
) {
    let wp = w.as_ptr();
    for r in 0..rows {
        // SAFETY: row r is inside w; column r0 + r is this task's.
        unsafe {
            out.write(
                0,
                r0 + r,
                row512_split::<F, A>(wp.add(r * row_bytes), &acts),
            )
        };
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q16gemm512<F: Pair16 + Fmt512>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    unsafe { q16gemm512_body::<F, false>(w, row_bytes, rows, acts, out, r0) }
}

/// [`q16gemm512`] on CPUs with AVX-512 VBMI (byte permutes for the block heads).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn q16gemm512_vbmi<F: Pair16 + Fmt512>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    unsafe { q16gemm512_body::<F, true>(w, row_bytes, rows, acts, out, r0) }
}

/// Whether this CPU has AVX-512 VBMI (on top of the AVX-512 level).
pub fn has_vbmi() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vbmi"))
}

#[inline(always)]
unsafe fn q16gemm512_body<F: Pair16 + Fmt512, const VBMI: bool>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    let wp = w.as_ptr();
    if acts.rows() == 1 && acts.nb >= 16 && acts.paired.len() >= acts.nb / 16 * 16 * QK {
        for r in 0..rows {
            // SAFETY: row r is inside w; column r0 + r is this task's.
            unsafe {
                out.write(
                    0,
                    r0 + r,
                    q16row512_grouped::<F, VBMI>(wp.add(r * row_bytes), &acts),
                )
            };
        }
        return;
    }
    if acts.rows() == 1 {
        for r in 0..rows {
            // SAFETY: row r is inside w; column r0 + r is this task's.
            unsafe { out.write(0, r0 + r, q16row512::<F>(wp.add(r * row_bytes), &acts, 0)) };
        }
        return;
    }
    for_tiles(rows, acts.rows(), |r, c, nr, nc| unsafe {
        let p = wp.add(r * row_bytes);
        match (nr, nc) {
            (4, 4) => q16tile512::<F, 4, 4>(p, row_bytes, &acts, c, out, r0 + r),
            (4, _) => q16tile512::<F, 4, 1>(p, row_bytes, &acts, c, out, r0 + r),
            (_, 4) => q16tile512::<F, 1, 4>(p, row_bytes, &acts, c, out, r0 + r),
            _ => q16tile512::<F, 1, 1>(p, row_bytes, &acts, c, out, r0 + r),
        }
    });
}

/// # Safety
/// The CPU must have the AVX-512 level; arguments as in [`super::qgemm16`].
pub unsafe fn qgemm16_avx512(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    let split = acts.rows() == 1 && acts.nb >= 16 && acts.split.len() >= split16_len(acts.nb);
    unsafe {
        match dtype {
            DType::Q4_0 if split && has_vbmi() => {
                gemv512_split::<Q40, _>(w, row_bytes, rows, acts, out, r0)
            }
            DType::Q4_1 if split && has_vbmi() => {
                gemv512_split::<Q41, _>(w, row_bytes, rows, acts, out, r0)
            }
            DType::Q4_0 if has_vbmi() => q16gemm512_vbmi::<Q40>(w, row_bytes, rows, acts, out, r0),
            DType::Q4_1 if has_vbmi() => q16gemm512_vbmi::<Q41>(w, row_bytes, rows, acts, out, r0),
            DType::Q8_0 if has_vbmi() => q16gemm512_vbmi::<Q80>(w, row_bytes, rows, acts, out, r0),
            DType::Q4_0 => q16gemm512::<Q40>(w, row_bytes, rows, acts, out, r0),
            DType::Q4_1 => q16gemm512::<Q41>(w, row_bytes, rows, acts, out, r0),
            DType::Q8_0 => q16gemm512::<Q80>(w, row_bytes, rows, acts, out, r0),
            other => panic!("qgemm16 on {other}"),
        }
    }
}

#[inline(always)]
unsafe fn q16tile256<F: Fmt16, const R: usize, const C: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &super::Q16Acts,
    t0: usize,
    out: OutPtr,
    n0: usize,
) {
    unsafe {
        let nb = acts.nb;
        let k = nb * QK;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..nb {
            let mut a = [(_mm256_setzero_si256(), _mm256_setzero_si256()); C];
            let mut dx = [0.0f32; C];
            let mut sx = [_mm256_setzero_ps(); C];
            for c in 0..C {
                let t = t0 + c;
                let q = acts.qs.as_ptr().add(t * k + b * QK) as *const __m256i;
                a[c] = (_mm256_loadu_si256(q), _mm256_loadu_si256(q.add(1)));
                dx[c] = *acts.d.get_unchecked(t * nb + b);
                if F::MIN {
                    sx[c] = _mm256_set1_ps(*acts.s.get_unchecked(t * nb + b) * 0.125);
                }
            }
            for r in 0..R {
                let p = w.add(r * row_bytes + b * F::BYTES);
                let raw = F::bytes(p);
                let (lo, hi) = (
                    _mm256_castsi256_si128(raw),
                    _mm256_extracti128_si256::<1>(raw),
                );
                let (mut w0, mut w1) = if F::SIGNED {
                    (_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi))
                } else {
                    (_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi))
                };
                if F::OFFSET != 0 {
                    let off = _mm256_set1_epi16(F::OFFSET);
                    w0 = _mm256_sub_epi16(w0, off);
                    w1 = _mm256_sub_epi16(w1, off);
                }
                let (dw, m) = F::scales(p);
                let mv = _mm256_set1_ps(m);
                for c in 0..C {
                    let dot = _mm256_add_epi32(
                        _mm256_madd_epi16(w0, a[c].0),
                        _mm256_madd_epi16(w1, a[c].1),
                    );
                    acc[r][c] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(dot),
                        _mm256_set1_ps(dw * dx[c]),
                        acc[r][c],
                    );
                    if F::MIN {
                        acc[r][c] = _mm256_fmadd_ps(mv, sx[c], acc[r][c]);
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out.write(t0 + c, n0 + r, hsum_256(acc[r][c]));
            }
        }
    }
}

/// Sums each of 8 vectors: lane `j` of the result is the sum of `v[j]`'s lanes.
#[inline(always)]
unsafe fn transpose_sum8_epi32(v: &[__m256i; 8]) -> __m256i {
    unsafe {
        let h01 = _mm256_hadd_epi32(v[0], v[1]);
        let h23 = _mm256_hadd_epi32(v[2], v[3]);
        let h45 = _mm256_hadd_epi32(v[4], v[5]);
        let h67 = _mm256_hadd_epi32(v[6], v[7]);
        // Per 128-bit half: the sums of v0..v3 (v4..v7) over that half's lanes.
        let a = _mm256_hadd_epi32(h01, h23);
        let b = _mm256_hadd_epi32(h45, h67);
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(a, b),
            _mm256_permute2x128_si256::<0x31>(a, b),
        )
    }
}

/// The f16 heads of the 8 blocks from `p`: d, and (Q4_1) m, 8 values each. Packed in
/// general-purpose registers — integer ports a SIMD kernel leaves idle — rather than by a
/// gather, which was the AVX2 decode kernel's most expensive instruction.
#[inline(always)]
unsafe fn heads8<F: Fmt16>(p: *const u8) -> (__m128i, __m128i) {
    unsafe {
        let four = |at: usize| -> i64 {
            let h = |j: usize| (p.add(j * F::BYTES + at) as *const u16).read_unaligned() as u64;
            (h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48) as i64
        };
        let half = |at: usize| -> i64 {
            let h =
                |j: usize| (p.add((4 + j) * F::BYTES + at) as *const u16).read_unaligned() as u64;
            (h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48) as i64
        };
        let d = _mm_set_epi64x(half(0), four(0));
        let m = if F::MIN {
            _mm_set_epi64x(half(2), four(2))
        } else {
            _mm_setzero_si128()
        };
        (d, m)
    }
}

/// One weight row × one activation row (decode), 8 blocks at a time: the blocks' integer
/// dots are reduced together and only then scaled, by vectors of the 8 weight scales
/// (gathered) and activation scales, instead of per block. The blocks after the last
/// whole 8 go through the one-row tile.
#[inline(always)]
unsafe fn q16row256_grouped<F: Fmt16>(w: *const u8, acts: &super::Q16Acts) -> f32 {
    unsafe {
        let nb = acts.nb;
        let groups = nb / 8;
        let qs = acts.qs.as_ptr();
        let offset = _mm256_set1_ps(F::OFFSET as f32);
        let mut acc = _mm256_setzero_ps();
        for g in 0..groups {
            let b0 = g * 8;
            let mut v = [_mm256_setzero_si256(); 8];
            for (j, vj) in v.iter_mut().enumerate() {
                let b = b0 + j;
                let (w0, w1) = F::words(w.add(b * F::BYTES));
                let a = qs.add(b * QK) as *const __m256i;
                *vj = _mm256_add_epi32(
                    _mm256_madd_epi16(w0, _mm256_loadu_si256(a)),
                    _mm256_madd_epi16(w1, _mm256_loadu_si256(a.add(1))),
                );
            }
            let dot = _mm256_cvtepi32_ps(transpose_sum8_epi32(&v));
            let dx = _mm256_loadu_ps(acts.d.as_ptr().add(b0));
            let sx = _mm256_loadu_ps(acts.s.as_ptr().add(b0));
            let (d16, m16) = heads8::<F>(w.add(b0 * F::BYTES));
            let dw = _mm256_cvtph_ps(d16);
            // Σ d_w (q − offset) · d_x a = d_w · (d_x Σ q a − offset · s).
            let t = if F::OFFSET != 0 {
                _mm256_fmsub_ps(dot, dx, _mm256_mul_ps(offset, sx))
            } else {
                _mm256_mul_ps(dot, dx)
            };
            acc = _mm256_fmadd_ps(dw, t, acc);
            if F::MIN {
                acc = _mm256_fmadd_ps(_mm256_cvtph_ps(m16), sx, acc);
            }
        }
        let mut sum = hsum_256(acc);
        let done = groups * 8;
        if done < nb {
            let rest = acts.blocks_from(done);
            let mut v = 0.0f32;
            q16tile256::<F, 1, 1>(
                w.add(done * F::BYTES),
                0,
                &rest,
                0,
                OutPtr { ptr: &mut v, ld: 1 },
                0,
            );
            sum += v;
        }
        sum
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q16gemm256<F: Fmt16>(
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    let wp = w.as_ptr();
    if acts.rows() == 1 && acts.nb >= 8 {
        for r in 0..rows {
            // SAFETY: row r is inside w; column r0 + r is this task's.
            unsafe {
                out.write(
                    0,
                    r0 + r,
                    q16row256_grouped::<F>(wp.add(r * row_bytes), &acts),
                )
            };
        }
        return;
    }
    for_tiles(rows, acts.rows(), |r, c, nr, nc| unsafe {
        let p = wp.add(r * row_bytes);
        match (nr, nc) {
            (4, 4) => q16tile256::<F, 4, 4>(p, row_bytes, &acts, c, out, r0 + r),
            (4, _) => q16tile256::<F, 4, 1>(p, row_bytes, &acts, c, out, r0 + r),
            (_, 4) => q16tile256::<F, 1, 4>(p, row_bytes, &acts, c, out, r0 + r),
            _ => q16tile256::<F, 1, 1>(p, row_bytes, &acts, c, out, r0 + r),
        }
    });
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; arguments as in [`super::qgemm16`].
pub unsafe fn qgemm16_avx2(
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    rows: usize,
    acts: super::Q16Acts,
    out: OutPtr,
    r0: usize,
) {
    unsafe {
        match dtype {
            DType::Q4_0 => q16gemm256::<Q40>(w, row_bytes, rows, acts, out, r0),
            DType::Q4_1 => q16gemm256::<Q41>(w, row_bytes, rows, acts, out, r0),
            DType::Q8_0 => q16gemm256::<Q80>(w, row_bytes, rows, acts, out, r0),
            other => panic!("qgemm16 on {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attention scores: 16 keys at a time, reduced together.

/// Sums each of 16 vectors: lane `j` of the result is the sum of `v[j]`'s lanes.
#[inline(always)]
unsafe fn transpose_sum16(v: &[__m512; 16]) -> __m512 {
    unsafe {
        let mut a = [_mm512_setzero_ps(); 8];
        for p in 0..8 {
            let (x, y) = (v[2 * p], v[2 * p + 1]);
            a[p] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
        }
        // Per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] → sums of 4 vectors per lane.
        let mut b = [_mm512_setzero_ps(); 4];
        for p in 0..4 {
            let (x, y) = (a[2 * p], a[2 * p + 1]);
            b[p] = _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
                _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
            );
        }
        let s0 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(b[0], b[1]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(b[0], b[1]),
        );
        let s1 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(b[2], b[3]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(b[2], b[3]),
        );
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(s0, s1),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(s0, s1),
        )
    }
}

/// `out[i·ld + j] = scale · q_i·k_j` for `i < nt` (at most 4), `j < nk`; `q_i` at
/// `q + i·qs`, `k_j` at `k + j·ks`, `hd` values each (a multiple of 16). Several rows go
/// in blocks of the rows × 4 keys: each key vector loaded serves every row (with 4 rows, 2
/// loads per 4 FMAs, where one row at a time needs a load per FMA), and one transposing
/// reduction sums the block's dot products; one row (decode) goes 16 keys at a time.
///
/// # Safety
/// The CPU must have the AVX-512 level; every row named must be readable, `out` writable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attn_scores_avx512<K: KeyElem>(
    q: *const f32,
    qs: usize,
    nt: usize,
    k: *const K,
    ks: usize,
    nk: usize,
    hd: usize,
    scale: f32,
    out: *mut f32,
    ld: usize,
) {
    unsafe {
        match nt {
            4 => attn_scores_rows::<K, 4>(q, qs, k, ks, nk, hd, scale, out, ld),
            3 => attn_scores_rows::<K, 3>(q, qs, k, ks, nk, hd, scale, out, ld),
            2 => attn_scores_rows::<K, 2>(q, qs, k, ks, nk, hd, scale, out, ld),
            1 => attn_scores_row(q, k, ks, nk, hd, scale, out),
            _ => panic!("attention scores for {nt} rows at once"),
        }
    }
}

/// A key element the score kernels read: f32 activations, or an f16 KV cache (widened
/// 16 values per `vcvtph2ps`).
pub trait KeyElem: Copy {
    /// The 16 values at `p` as f32.
    ///
    /// # Safety
    /// The 16 values must be readable and the CPU must have the AVX-512 level (callers are
    /// kernels compiled for it).
    unsafe fn load16(p: *const Self) -> __m512;
}

impl KeyElem for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl KeyElem for half::f16 {
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

/// `dst[i] = src[i]` as f32, 16 values per `vcvtph2ps`.
///
/// # Safety
/// The CPU must have the AVX-512 level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn widen_f16_avx512(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n, inside both slices.
        unsafe {
            let v = _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), v);
        }
        i += 16;
    }
    for j in i..n {
        dst[j] = src[j].to_f32();
    }
}

/// The weighted value sums of an attention tile over an f16 cache, for `NT` query rows and
/// one 64-value chunk of the head: `out[i][c] = Σ_j p[i][j] · v[j][c]` with `p[i]` at
/// `p.add(i * span)` (`span` keys) and value row `j` at `v.add(j * stride)`. Each key's
/// chunk is widened in registers (4 × `vcvtph2ps`) and serves every row; the accumulators
/// (`NT` × 4 registers) never leave registers. Each sum runs over the keys in order with
/// separate multiply and add, as `ops::weighted_values` and the scalar code do, so the
/// results are the same bits.
///
/// # Safety
/// The CPU must have the AVX-512 level; `span` value rows of 64 values from `v`, `stride`
/// apart, `NT` probability rows of `span` values from `p`, and `NT` output rows of 64
/// values from `out`, `out_ld` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn weighted_values_f16_avx512<const NT: usize>(
    v: *const half::f16,
    stride: usize,
    span: usize,
    p: *const f32,
    out: *mut f32,
    out_ld: usize,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; NT];
        for j in 0..span {
            let row = v.add(j * stride) as *const __m256i;
            let x = [
                _mm512_cvtph_ps(_mm256_loadu_si256(row)),
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(1))),
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(2))),
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(3))),
            ];
            for (i, ai) in acc.iter_mut().enumerate() {
                let pi = _mm512_set1_ps(*p.add(i * span + j));
                for (a, &xc) in ai.iter_mut().zip(&x) {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(pi, xc));
                }
            }
        }
        for (i, ai) in acc.iter().enumerate() {
            for (c, &a) in ai.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * out_ld + 16 * c), a);
            }
        }
    }
}

/// `Σ a[c]·b[c]` over `n` values (a multiple of 16), 16 lanes then one reduction.
#[inline(always)]
unsafe fn dot512<K: KeyElem>(a: *const f32, b: *const K, n: usize) -> f32 {
    unsafe {
        let mut acc = _mm512_setzero_ps();
        for c in (0..n).step_by(16) {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(c)), K::load16(b.add(c)), acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}

/// One query row (decode): 16 keys per block, so one transposing reduction sums 16 dot
/// products.
#[inline(always)]
unsafe fn attn_scores_row<K: KeyElem>(
    q: *const f32,
    k: *const K,
    ks: usize,
    nk: usize,
    hd: usize,
    scale: f32,
    out: *mut f32,
) {
    unsafe {
        let sv = _mm512_set1_ps(scale);
        let mut j0 = 0;
        while j0 + 16 <= nk {
            let mut acc = [_mm512_setzero_ps(); 16];
            for c in (0..hd).step_by(16) {
                let qv = _mm512_loadu_ps(q.add(c));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(qv, K::load16(k.add((j0 + j) * ks + c)), *a);
                }
            }
            _mm512_storeu_ps(out.add(j0), _mm512_mul_ps(transpose_sum16(&acc), sv));
            j0 += 16;
        }
        for j in j0..nk {
            *out.add(j) = dot512(q, k.add(j * ks), hd) * scale;
        }
    }
}

/// Two to four query rows (prefill): blocks of the rows × 4 keys.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attn_scores_rows<K: KeyElem, const NT: usize>(
    q: *const f32,
    qs: usize,
    k: *const K,
    ks: usize,
    nk: usize,
    hd: usize,
    scale: f32,
    out: *mut f32,
    ld: usize,
) {
    unsafe {
        let sv = _mm512_set1_ps(scale);
        let mut j0 = 0;
        while j0 + 4 <= nk {
            // acc[4i + kk]: row i, key j0 + kk (rows past NT stay zero).
            let mut acc = [_mm512_setzero_ps(); 16];
            for c in (0..hd).step_by(16) {
                let qv: [__m512; NT] = std::array::from_fn(|i| _mm512_loadu_ps(q.add(i * qs + c)));
                for kk in 0..4 {
                    let kv = K::load16(k.add((j0 + kk) * ks + c));
                    for (i, &qi) in qv.iter().enumerate() {
                        acc[4 * i + kk] = _mm512_fmadd_ps(qi, kv, acc[4 * i + kk]);
                    }
                }
            }
            let mut sums = [0.0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), _mm512_mul_ps(transpose_sum16(&acc), sv));
            for (i, row) in sums.chunks_exact(4).enumerate().take(NT) {
                std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(i * ld + j0), 4);
            }
            j0 += 4;
        }
        for j in j0..nk {
            for i in 0..NT {
                *out.add(i * ld + j) = dot512(q.add(i * qs), k.add(j * ks), hd) * scale;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dequantisation of weight rows to f32 (prefill panels).

/// # Safety
/// The CPU must have the AVX-512 level; `bytes` holds whole blocks of `dtype` for the
/// `out.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dequantize_avx512(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let nb = out.len() / QK;
    let size = dtype.type_size();
    assert!(bytes.len() >= nb * size);
    unsafe {
        let o = out.as_mut_ptr();
        for b in 0..nb {
            let (v0, v1) = dequant_block512(dtype, bytes.as_ptr().add(b * size));
            _mm512_storeu_ps(o.add(b * QK), v0);
            _mm512_storeu_ps(o.add(b * QK + 16), v1);
        }
    }
}

// ---------------------------------------------------------------------------------------
// K-blocked f32 GEMM for prefill panels: the 4 activation rows of a tile stay in L1 while
// every 4-row tile of the weight panel passes over one 512-wide slice of them.

/// Length of a K slice.
const KB: usize = 512;

/// Scratch values [`fgemm_blocked_avx512`] needs for a panel of `rows` rows.
pub fn blocked_scratch(rows: usize) -> usize {
    rows / 4 * 256
}

/// # Safety
/// The CPU must have the AVX-512 level; `acc` holds [`blocked_scratch`]`(rows)` values;
/// other arguments as in [`super::fgemm`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn fgemm_blocked_avx512(
    w: &[f32],
    rows: usize,
    x: &[f32],
    k: usize,
    out: OutPtr,
    r0: usize,
    acc: &mut [f32],
) {
    let t_rows = x.len() / k.max(1);
    let (rows4, t4) = (rows / 4 * 4, t_rows / 4 * 4);
    let r_tiles = rows4 / 4;
    assert!(acc.len() >= r_tiles * 256 && w.len() >= rows * k);
    unsafe {
        let (wp, xp, ap) = (w.as_ptr(), x.as_ptr(), acc.as_mut_ptr());
        for c in (0..t4).step_by(4) {
            acc[..r_tiles * 256].fill(0.0);
            let mut k0 = 0;
            while k0 < k {
                let kn = KB.min(k - k0);
                let full = kn / 16 * 16;
                for rt in 0..r_tiles {
                    let slot = ap.add(rt * 256);
                    let mut a: [[__m512; 4]; 4] = std::array::from_fn(|r| {
                        std::array::from_fn(|cc| _mm512_loadu_ps(slot.add((r * 4 + cc) * 16)))
                    });
                    let wr = wp.add(rt * 4 * k + k0);
                    let xr = xp.add(c * k + k0);
                    let mut i = 0;
                    while i < full {
                        let xv: [__m512; 4] =
                            std::array::from_fn(|cc| _mm512_loadu_ps(xr.add(cc * k + i)));
                        for r in 0..4 {
                            let wv = _mm512_loadu_ps(wr.add(r * k + i));
                            for cc in 0..4 {
                                a[r][cc] = _mm512_fmadd_ps(wv, xv[cc], a[r][cc]);
                            }
                        }
                        i += 16;
                    }
                    if full < kn {
                        let m: __mmask16 = (1u32 << (kn - full)).wrapping_sub(1) as u16;
                        let xv: [__m512; 4] = std::array::from_fn(|cc| {
                            _mm512_maskz_loadu_ps(m, xr.add(cc * k + full))
                        });
                        for r in 0..4 {
                            let wv = _mm512_maskz_loadu_ps(m, wr.add(r * k + full));
                            for cc in 0..4 {
                                a[r][cc] = _mm512_fmadd_ps(wv, xv[cc], a[r][cc]);
                            }
                        }
                    }
                    for r in 0..4 {
                        for cc in 0..4 {
                            _mm512_storeu_ps(slot.add((r * 4 + cc) * 16), a[r][cc]);
                        }
                    }
                }
                k0 += kn;
            }
            for rt in 0..r_tiles {
                for r in 0..4 {
                    for cc in 0..4 {
                        let v = _mm512_loadu_ps(ap.add(rt * 256 + (r * 4 + cc) * 16));
                        out.write(c + cc, r0 + rt * 4 + r, _mm512_reduce_add_ps(v));
                    }
                }
            }
        }
        // Tails: rows past the last 4-row tile (all activation rows), and activation rows
        // past the last 4-row tile (the tiled weight rows).
        if rows4 < rows {
            fgemm512::<WF32>(
                bytemuck::cast_slice(&w[rows4 * k..rows * k]),
                rows - rows4,
                x,
                k,
                out,
                r0 + rows4,
            );
        }
        if t4 < t_rows && rows4 > 0 {
            let tail_out = OutPtr {
                ptr: out.ptr.add(t4 * out.ld),
                ld: out.ld,
            };
            fgemm512::<WF32>(
                bytemuck::cast_slice(&w[..rows4 * k]),
                rows4,
                &x[t4 * k..],
                k,
                tail_out,
                r0,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// bf16 GEMM for prefill panels of quantised weights (AVX-512 BF16): the weight panel is
// dequantised to bf16 once per task, the activation rows converted to bf16 once per call,
// and `vdpbf16ps` multiplies pairs of bf16 into f32 accumulators — twice the multiplies per
// instruction of f32 FMA, no per-block scales in the inner loop. Rounding both operands to
// bf16 (8-bit mantissa, round to nearest even) costs ~2⁻⁹ relative per product: far below
// a 4- or 8-bit weight's own quantisation error, and relative to each value (unlike int8
// activations, whose error is relative to the block's largest value).

/// Whether this CPU has the AVX-512 BF16 dot product (on top of the AVX-512 level).
pub fn has_bf16() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bf16"))
}

/// f32 values (a multiple of 32) to bf16, round to nearest even.
///
/// # Safety
/// The CPU must have the AVX-512 level and [`has_bf16`]; `out.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn to_bf16_avx512(x: &[f32], out: &mut [u16]) {
    assert!(x.len() == out.len() && x.len().is_multiple_of(32));
    unsafe {
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        for i in (0..x.len()).step_by(32) {
            let lo = _mm512_loadu_ps(xp.add(i));
            let hi = _mm512_loadu_ps(xp.add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(op.add(i) as *mut __m512i, v);
        }
    }
}

/// Weight rows of one tile of a packed bf16 panel: two vectors of 16 rows.
pub const BF_ROWS: usize = 32;

/// bf16 values of a packed panel (see [`pack_bf16_avx512`]) of `rows` rows of `k` values.
pub fn bf16_packed_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(BF_ROWS) * BF_ROWS * k
}

/// The 32 values of one quantised block as f32 (two vectors).
#[inline(always)]
unsafe fn dequant_block512(dtype: DType, p: *const u8) -> (__m512, __m512) {
    unsafe {
        let d = _mm512_set1_ps(f16_to_f32(read_u16(p)));
        match dtype {
            DType::Q4_0 | DType::Q4_1 => {
                let q = _mm_loadu_si128(
                    p.add(if dtype == DType::Q4_0 { 2 } else { 4 }) as *const __m128i
                );
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, mask)));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(
                    _mm_srli_epi16::<4>(q),
                    mask,
                )));
                if dtype == DType::Q4_0 {
                    let eight = _mm512_set1_ps(8.0);
                    (
                        _mm512_mul_ps(_mm512_sub_ps(lo, eight), d),
                        _mm512_mul_ps(_mm512_sub_ps(hi, eight), d),
                    )
                } else {
                    let m = _mm512_set1_ps(f16_to_f32(read_u16(p.add(2))));
                    (_mm512_fmadd_ps(lo, d, m), _mm512_fmadd_ps(hi, d, m))
                }
            }
            DType::Q8_0 => {
                let a = _mm_loadu_si128(p.add(2) as *const __m128i);
                let c = _mm_loadu_si128(p.add(18) as *const __m128i);
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a)), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), d),
                )
            }
            other => panic!("dequantize on {other}"),
        }
    }
}

/// Transposes a 16×16 matrix of 32-bit lanes held in 16 vectors: afterwards `r[j]` lane `i`
/// is what `r[i]` lane `j` was.
#[inline(always)]
unsafe fn transpose16_epi32(r: &mut [__m512i; 16]) {
    unsafe {
        // Within each 128-bit lane: pairs of rows interleaved by 32 bits, then by 64 bits.
        let t: [__m512i; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(a, b)
            } else {
                _mm512_unpackhi_epi32(a, b)
            }
        });
        // u[4q + j], 128-bit lane l: column 4l + j of rows 4q..4q+3.
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            let (q, j) = (i / 4, i % 4);
            let (a, b) = (t[4 * q + (j / 2)], t[4 * q + 2 + (j / 2)]);
            if j % 2 == 0 {
                _mm512_unpacklo_epi64(a, b)
            } else {
                _mm512_unpackhi_epi64(a, b)
            }
        });
        // Column 4l + j gathers 128-bit lane l of u[j], u[4 + j], u[8 + j], u[12 + j].
        for j in 0..4 {
            let v0 = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
            let v1 = _mm512_shuffle_i32x4::<0xDD>(u[j], u[4 + j]);
            let w0 = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
            let w1 = _mm512_shuffle_i32x4::<0xDD>(u[8 + j], u[12 + j]);
            r[j] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
            r[8 + j] = _mm512_shuffle_i32x4::<0xDD>(v0, w0);
            r[4 + j] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
            r[12 + j] = _mm512_shuffle_i32x4::<0xDD>(v1, w1);
        }
    }
}

/// Dequantises `rows` weight rows (`row_bytes` apart in `raw`, `k` values each) to bf16 in
/// the layout [`bf16_gemm_avx512`] multiplies: tiles of [`BF_ROWS`] rows, and in each tile,
/// for every pair of values `(w[2p], w[2p+1])`, the 32 rows' pairs side by side as 32-bit
/// lanes (u16 index `tile·32·k + p·64 + 2j + e` for row `j` of the tile). Rows past `rows`
/// in the last tile are zero. Each 16 rows are first dequantised row by row into `tmp`
/// (sequential reads the hardware prefetcher follows; reading the 16 rows block by block
/// left every block waiting on DRAM), then transposed 16 × 16 pairs at a time.
///
/// # Safety
/// The CPU must have the AVX-512 level and [`has_bf16`]; `k` is a multiple of 32; `raw`
/// holds `rows` rows; `out.len() >= bf16_packed_len(rows, k)`; `tmp.len() >= 16 * k`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
pub unsafe fn pack_bf16_avx512(
    dtype: DType,
    raw: &[u8],
    row_bytes: usize,
    rows: usize,
    k: usize,
    out: &mut [u16],
    tmp: &mut [u16],
) {
    let size = dtype.type_size();
    let nb = k / QK;
    assert!(k.is_multiple_of(QK) && row_bytes >= nb * size && raw.len() >= rows * row_bytes);
    assert!(out.len() >= bf16_packed_len(rows, k) && tmp.len() >= 16 * k);
    let (rp, op, tp) = (raw.as_ptr(), out.as_mut_ptr(), tmp.as_mut_ptr());
    for tile in 0..rows.div_ceil(BF_ROWS) {
        for g in 0..2 {
            let first = tile * BF_ROWS + g * 16;
            let live = rows.saturating_sub(first).min(16);
            for i in 0..live {
                // Rows are contiguous: fetch the row after next while this one is read (the
                // hardware prefetcher stops at every 4 KiB page; without this the packing
                // waited on DRAM for most of its time).
                let ahead = (first + i + 2) * row_bytes;
                if ahead + row_bytes <= raw.len() {
                    for line in (0..row_bytes).step_by(64) {
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(rp.add(ahead + line) as *const i8) };
                    }
                }
                for b in 0..nb {
                    unsafe {
                        let (lo, hi) =
                            dequant_block512(dtype, rp.add((first + i) * row_bytes + b * size));
                        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                        _mm512_storeu_si512(tp.add(i * k + b * QK) as *mut __m512i, v);
                    }
                }
            }
            for b in 0..nb {
                // One block of 16 rows as 16 × 16 pairs, transposed to 16 × 16 rows.
                let mut v: [__m512i; 16] = std::array::from_fn(|i| {
                    if i < live {
                        unsafe { _mm512_loadu_si512(tp.add(i * k + b * QK) as *const __m512i) }
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                unsafe {
                    transpose16_epi32(&mut v);
                    let base = op.add(tile * BF_ROWS * k + g * 32);
                    for (j, vj) in v.iter().enumerate() {
                        _mm512_storeu_si512(base.add((b * 16 + j) * 64) as *mut __m512i, *vj);
                    }
                }
            }
        }
    }
}

/// Pairs of k values per K slice of the bf16 GEMM: a tile's slice of packed weights
/// (128 pairs × 128 bytes = 16 KiB) stays in L1 while every group of activation rows
/// passes it.
const BF_KC: usize = 256;

/// One register tile: `out[m][0..32] (+)= Σ_p x[m][2p..2p+2] · w[p]` over `np` pairs for
/// the first `MR` rows of a packed activation group `x` (its slice at the current pair) and
/// a packed weight tile `w` (likewise; 64 bf16 per pair). Each weight vector (16 rows × one
/// pair) meets 12 broadcast activation pairs: 24 accumulators, 2 loads and 12 broadcasts
/// per 24 `vdpbf16ps`. `first` starts from zero instead of the output; `m0`/`m1` mask the
/// tile's live rows.
#[inline(always)]
unsafe fn bf16_outer<const MR: usize>(
    w: *const u16,
    np: usize,
    x: *const u16,
    o: *mut f32,
    ldo: usize,
    first: bool,
    (m0, m1): (__mmask16, __mmask16),
) {
    unsafe {
        let mut a: [[__m512; 2]; MR] = std::array::from_fn(|m| {
            if first {
                [_mm512_setzero_ps(); 2]
            } else {
                [
                    _mm512_maskz_loadu_ps(m0, o.add(m * ldo)),
                    _mm512_maskz_loadu_ps(m1, o.add(m * ldo + 16)),
                ]
            }
        });
        for p in 0..np {
            let wp = w.add(p * 64) as *const __m512i;
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(1)));
            let xp = x.add(p * 2 * BF_MR) as *const i32;
            for (m, am) in a.iter_mut().enumerate() {
                let b: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(std::ptr::read_unaligned(xp.add(m))));
                am[0] = _mm512_dpbf16_ps(am[0], w0, b);
                am[1] = _mm512_dpbf16_ps(am[1], w1, b);
            }
        }
        for (m, am) in a.iter().enumerate() {
            _mm512_mask_storeu_ps(o.add(m * ldo), m0, am[0]);
            _mm512_mask_storeu_ps(o.add(m * ldo + 16), m1, am[1]);
        }
    }
}

/// `out[t][r0 + r] = Σ_k x[t][k] · w[r][k]` for a packed bf16 weight panel `w` of `rows`
/// rows ([`pack_bf16_avx512`]) and `t_rows` packed bf16 activation rows `x`
/// ([`super::pack_bf16_acts`]); `k` is a multiple of 32. Outer products: the sums land in
/// their output lanes, no horizontal reductions. For each 32-row tile and K slice, the
/// slice stays in L1 while every 12-row activation group passes; partial sums wait in the
/// output between slices.
///
/// # Safety
/// The CPU must have the AVX-512 level and [`has_bf16`]; output as in [`super::fgemm`],
/// with `out.ld ≥ r0 + rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
pub unsafe fn bf16_gemm_avx512(
    w: &[u16],
    rows: usize,
    x: &[u16],
    t_rows: usize,
    k: usize,
    out: OutPtr,
    r0: usize,
) {
    assert!(k.is_multiple_of(32) && w.len() >= bf16_packed_len(rows, k));
    assert!(x.len() >= super::bf16_acts_len(t_rows, k) && out.ld >= r0 + rows);
    let pairs = k / 2;
    let mask = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    for tile in 0..rows.div_ceil(BF_ROWS) {
        let live = (rows - tile * BF_ROWS).min(BF_ROWS);
        let masks = (mask(live), mask(live.saturating_sub(16)));
        let mut p0 = 0;
        while p0 < pairs {
            let np = BF_KC.min(pairs - p0);
            let first = p0 == 0;
            let wt = unsafe { w.as_ptr().add(tile * BF_ROWS * k + p0 * 64) };
            let mut t = 0;
            while t < t_rows {
                let mr = BF_MR.min(t_rows - t);
                // Group t / 12 starts at t·k values; its pair p at 24·p more.
                let (xt, ot) = unsafe {
                    (
                        x.as_ptr().add(t * k + p0 * 2 * BF_MR),
                        out.ptr.add(t * out.ld + r0 + tile * BF_ROWS),
                    )
                };
                let ldo = out.ld;
                unsafe {
                    match mr {
                        12 => bf16_outer::<12>(wt, np, xt, ot, ldo, first, masks),
                        11 => bf16_outer::<11>(wt, np, xt, ot, ldo, first, masks),
                        10 => bf16_outer::<10>(wt, np, xt, ot, ldo, first, masks),
                        9 => bf16_outer::<9>(wt, np, xt, ot, ldo, first, masks),
                        8 => bf16_outer::<8>(wt, np, xt, ot, ldo, first, masks),
                        7 => bf16_outer::<7>(wt, np, xt, ot, ldo, first, masks),
                        6 => bf16_outer::<6>(wt, np, xt, ot, ldo, first, masks),
                        5 => bf16_outer::<5>(wt, np, xt, ot, ldo, first, masks),
                        4 => bf16_outer::<4>(wt, np, xt, ot, ldo, first, masks),
                        3 => bf16_outer::<3>(wt, np, xt, ot, ldo, first, masks),
                        2 => bf16_outer::<2>(wt, np, xt, ot, ldo, first, masks),
                        _ => bf16_outer::<1>(wt, np, xt, ot, ldo, first, masks),
                    }
                }
                t += mr;
            }
            p0 += np;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;

    fn avx512() -> bool {
        super::super::Isa::available().contains(&super::super::Isa::Avx512)
    }

    /// Random values whose f16 heads are all distinct.
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    /// The AVX-512 packer lays out bf16 weight panels as documented, rounding as `half`
    /// does, ragged last tile (zeros) included.
    #[test]
    fn bf16_panels_pack_in_the_documented_layout() {
        if !avx512() || !has_bf16() {
            eprintln!("skipped: no AVX-512 BF16 here");
            return;
        }
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            for (rows, k) in [(32, 64), (45, 96), (7, 32)] {
                let v: Vec<f32> = random_bytes(rows * k, 3)
                    .iter()
                    .map(|&b| b as f32 / 64.0 - 2.0)
                    .collect();
                let w = quant::quantize(dtype, &v);
                let row_bytes = w.len() / rows;
                let len = super::super::bf16_packed_len(rows, k);
                let (mut fast, mut tmp) = (vec![1u16; len], vec![3u16; 16 * k]);
                // SAFETY: AVX-512 BF16 checked above; shapes consistent.
                unsafe { pack_bf16_avx512(dtype, &w, row_bytes, rows, k, &mut fast, &mut tmp) };
                // The layout, spelled out: row j of tile t, value 2p + e.
                let mut portable = vec![0u16; len];
                let mut f = vec![0.0f32; k];
                for r in 0..rows {
                    // SAFETY: AVX-512 checked above; one row of whole blocks.
                    unsafe {
                        dequantize_avx512(dtype, &w[r * row_bytes..(r + 1) * row_bytes], &mut f)
                    };
                    for (i, &x) in f.iter().enumerate() {
                        let at = r / 32 * 32 * k + i / 2 * 64 + 2 * (r % 32) + i % 2;
                        portable[at] = half::bf16::from_f32(x).to_bits();
                    }
                }
                assert_eq!(fast, portable, "{dtype} {rows}x{k}");
            }
        }
    }

    #[test]
    fn head_permutes_read_every_blocks_d_and_m() {
        if !avx512() || !has_vbmi() {
            eprintln!("skipped: no AVX-512 VBMI here");
            return;
        }
        fn check<F: Pair16>() {
            let bytes = <F as Fmt16>::BYTES;
            let raw = random_bytes(16 * bytes, bytes as u64);
            let mut got = [0u16; 32];
            // SAFETY: VBMI checked above; the group is 16 blocks long.
            unsafe {
                let h = heads_vbmi(raw.as_ptr(), &F::HEADS);
                _mm512_storeu_si512(got.as_mut_ptr() as *mut __m512i, h);
            }
            for j in 0..16 {
                let at = j * bytes;
                assert_eq!(
                    got[j],
                    u16::from_le_bytes([raw[at], raw[at + 1]]),
                    "{bytes}: d {j}"
                );
                let m = if <F as Fmt16>::MIN {
                    u16::from_le_bytes([raw[at + 2], raw[at + 3]])
                } else {
                    0
                };
                assert_eq!(got[16 + j], m, "{bytes}: m {j}");
            }
        }
        check::<Q40>();
        check::<Q41>();
        check::<Q80>();
    }

    /// The VBMI and gather variants of the decode kernel give identical bits.
    #[test]
    fn decode_kernels_are_the_same_with_and_without_vbmi() {
        if !avx512() || !has_vbmi() {
            eprintln!("skipped: no AVX-512 VBMI here");
            return;
        }
        let (rows, nb) = (7, 37);
        let k = nb * QK;
        let x: Vec<f32> = random_bytes(k, 5)
            .iter()
            .map(|&b| b as f32 / 64.0 - 2.0)
            .collect();
        let (mut qs, mut d, mut s) = (vec![0i16; k], vec![0.0; nb], vec![0.0; nb]);
        super::super::quantize_rows16(super::super::Isa::Avx512, &x, &mut qs, &mut d, &mut s);
        let mut paired = vec![0i16; nb / 2 * 2 * QK];
        super::super::pair_blocks16(&qs, &mut paired);
        let mut split = vec![0u8; split16_len(nb)];
        super::super::split_blocks16(&qs, &mut split);
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let v: Vec<f32> = random_bytes(rows * k, 9)
                .iter()
                .map(|&b| b as f32 / 128.0 - 1.0)
                .collect();
            let w = quant::quantize(dtype, &v);
            let row_bytes = w.len() / rows;
            let run = |vbmi: bool, by_bytes: bool| {
                let mut out = vec![0.0f32; rows];
                let o = OutPtr {
                    ptr: out.as_mut_ptr(),
                    ld: rows,
                };
                let a = super::super::Q16Acts {
                    qs: &qs,
                    d: &d,
                    s: &s,
                    nb,
                    paired: &paired,
                    split: &split,
                };
                // SAFETY: AVX-512 and VBMI checked above; shapes consistent.
                unsafe {
                    match (dtype, vbmi) {
                        (DType::Q4_0, true) if by_bytes => {
                            gemv512_split::<Q40, _>(&w, row_bytes, rows, a, o, 0)
                        }
                        (DType::Q4_1, true) if by_bytes => {
                            gemv512_split::<Q41, _>(&w, row_bytes, rows, a, o, 0)
                        }
                        (DType::Q4_0, true) => q16gemm512_vbmi::<Q40>(&w, row_bytes, rows, a, o, 0),
                        (DType::Q4_0, false) => q16gemm512::<Q40>(&w, row_bytes, rows, a, o, 0),
                        (DType::Q4_1, true) => q16gemm512_vbmi::<Q41>(&w, row_bytes, rows, a, o, 0),
                        (DType::Q4_1, false) => q16gemm512::<Q41>(&w, row_bytes, rows, a, o, 0),
                        (_, true) => q16gemm512_vbmi::<Q80>(&w, row_bytes, rows, a, o, 0),
                        (_, false) => q16gemm512::<Q80>(&w, row_bytes, rows, a, o, 0),
                    }
                }
                out
            };
            assert_eq!(run(true, false), run(false, false), "{dtype}");
            if dtype != DType::Q8_0 {
                // The split-byte Q4 kernel: the same integer dots, the same float steps.
                assert_eq!(run(true, true), run(false, false), "{dtype} split");
            }
        }
    }

    /// The split-byte Q4 decode kernel with int8 activations against the int8 tile kernel:
    /// the same integer dots per block, scaled in another order.
    #[test]
    fn int8_split_decode_kernel_matches_the_tile_kernel() {
        if !avx512() || !has_vbmi() {
            eprintln!("skipped: no AVX-512 VBMI here");
            return;
        }
        for (rows, nb) in [(7, 37), (3, 16), (2, 48), (5, 17)] {
            let k = nb * QK;
            let x: Vec<f32> = random_bytes(k, 11)
                .iter()
                .map(|&b| b as f32 / 64.0 - 2.0)
                .collect();
            let (mut qs, mut d, mut s) = (vec![0i8; k], vec![0.0; nb], vec![0.0; nb]);
            super::super::quantize_rows(super::super::Isa::Avx512, &x, &mut qs, &mut d, &mut s);
            let mut split = vec![0u8; split8_len(nb)];
            super::super::split_blocks8(&qs, &mut split);
            for dtype in [DType::Q4_0, DType::Q4_1] {
                let v: Vec<f32> = random_bytes(rows * k, 13)
                    .iter()
                    .map(|&b| b as f32 / 128.0 - 1.0)
                    .collect();
                let w = quant::quantize(dtype, &v);
                let row_bytes = w.len() / rows;
                let run = |split: &[u8]| {
                    let mut out = vec![0.0f32; rows];
                    let o = OutPtr {
                        ptr: out.as_mut_ptr(),
                        ld: rows,
                    };
                    let a = Q8Acts {
                        qs: &qs,
                        d: &d,
                        s: &s,
                        nb,
                        split,
                    };
                    // SAFETY: AVX-512 and VBMI checked above; shapes consistent.
                    unsafe { qgemm_avx512(dtype, &w, row_bytes, rows, a, o, 0) };
                    out
                };
                let (by_bytes, tiles) = (run(&split), run(&[]));
                let scale = tiles.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (r, (a, b)) in by_bytes.iter().zip(&tiles).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "{dtype} {rows}×{nb} row {r}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
