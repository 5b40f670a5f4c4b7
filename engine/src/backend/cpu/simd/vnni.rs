//! Prefill GEMM of 4-bit weights (Q4_0, Q4_1) with int8 activations on AVX-512 VNNI.
//!
//! The decode kernels dot one activation row with weight blocks as stored; a prefill has
//! many activation rows, so each task first repacks its panel of weight rows into an
//! order in which one `vpdpbusd` does useful work in every lane with no reduction
//! afterwards. Rows are taken 16 at a time (a *group*, one per 16-lane register); for
//! each 32-value block the group is stored as
//!
//! - 8 × 64 bytes of unsigned nibble values: register `g` holds, in lane `j`, elements
//!   `4g … 4g+3` of row `j` (so `vpdpbusd` against a broadcast of the activation's 4
//!   bytes `4g … 4g+3` adds row `j`'s partial dot to lane `j`),
//! - the 16 rows' scales `d_w` (f32), then (Q4_1) their minimums `m_w` (f32),
//!
//! 640 bytes per group and block. With activations quantised per 32-block to int8
//! (`q_x`, `d_x`, `s_x = d_x·Σq_x`, [`super::Q8Acts`]) a block adds
//! `d_w·d_x·Σ (q_w − 8)·q_x` (Q4_0: the integer accumulator starts at `−8·Σq_x`, computed
//! once per activation block by [`offset_sums`]) or `d_w·d_x·Σ q_w·q_x + m_w·s_x` (Q4_1)
//! to each lane's f32 sum — the same value as the per-block kernels and the scalar
//! reference, up to float rounding. Each lane of a finished sum is one output column, so
//! a tile stores its 16 outputs per row with one (masked) store.
//!
//! The micro-kernel works on 2 groups × 6 activation rows: 12 integer and 12 f32
//! accumulators, 8 `vpdpbusd` per block for each of them and 3 float operations (Q4_1: 4)
//! to scale.

// Tiles index several arrays with one counter; kernels take many operands.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

use super::{OutPtr, Q8Acts};
use crate::quant::QK;
use crate::tensor::DType;

/// Weight rows per group (lanes of a 512-bit register of i32).
pub const GROUP: usize = 16;
/// Bytes of one group's block in the packed panel: 8 × 64 nibble bytes, 16 `d_w`, 16 `m_w`.
const PACKED_BLOCK: usize = 8 * 64 + 2 * 64;
/// Activation rows per micro-kernel call.
const TILE_T: usize = 6;

/// Whether [`pack_q4`] and [`gemm`] take this weight format.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q4_1)
}

/// `−8·Σq` of every activation block (Q4_0's offset, applied through the integer
/// accumulator's start value); empty for Q4_1, whose minimum goes through `s`.
pub fn offset_sums(dtype: DType, qs: &[i8], out: &mut Vec<i32>) {
    out.clear();
    if dtype == DType::Q4_0 {
        out.extend(
            qs.chunks_exact(QK)
                .map(|b| -8 * b.iter().map(|&q| q as i32).sum::<i32>()),
        );
    }
}

/// Bytes of the packed panel of `rows` weight rows of `nb` blocks.
pub fn packed_len(rows: usize, nb: usize) -> usize {
    rows.div_ceil(GROUP) * nb * PACKED_BLOCK
}

/// Repacks `rows` weight rows (`dtype` blocks, `row_bytes` each, `nb` blocks) into `out`
/// ([`packed_len`] bytes) in the order described in the module docs. Lanes past the last
/// row are zero (they add nothing and are never stored).
pub fn pack_q4(dtype: DType, w: &[u8], row_bytes: usize, rows: usize, nb: usize, out: &mut [u8]) {
    assert!(supports(dtype), "pack_q4 on {dtype}");
    assert!(w.len() >= rows * row_bytes && out.len() >= packed_len(rows, nb));
    let (block_bytes, qs_at) = if dtype == DType::Q4_0 {
        (18, 2)
    } else {
        (20, 4)
    };
    let group_bytes = nb * PACKED_BLOCK;
    for (gi, dst_group) in out[..packed_len(rows, nb)]
        .chunks_exact_mut(group_bytes)
        .enumerate()
    {
        dst_group.fill(0);
        for j in 0..GROUP.min(rows - gi * GROUP) {
            let row = &w[(gi * GROUP + j) * row_bytes..][..row_bytes];
            for (b, dst) in dst_group.chunks_exact_mut(PACKED_BLOCK).enumerate() {
                let blk = &row[b * block_bytes..][..block_bytes];
                let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                let m = if dtype == DType::Q4_0 {
                    0.0
                } else {
                    half::f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32()
                };
                let mut q = [0u8; 16];
                q.copy_from_slice(&blk[qs_at..qs_at + 16]);
                let packed = u128::from_le_bytes(q);
                const LOW: u128 = 0x0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F;
                // Elements 0–15 are the low nibbles, 16–31 the high ones.
                let halves = [
                    (packed & LOW).to_le_bytes(),
                    ((packed >> 4) & LOW).to_le_bytes(),
                ];
                for g in 0..8 {
                    let src = &halves[g / 4][(g % 4) * 4..][..4];
                    dst[g * 64 + j * 4..][..4].copy_from_slice(src);
                }
                dst[512 + j * 4..][..4].copy_from_slice(&d.to_le_bytes());
                dst[576 + j * 4..][..4].copy_from_slice(&m.to_le_bytes());
            }
        }
    }
}

/// Accumulates an `R`-group × `C`-row tile over all `nb` blocks and stores it:
/// `out[t0 + c][n0 + 16r + j]` for the `valid` rows of the groups.
#[inline(always)]
unsafe fn tile<const MIN: bool, const R: usize, const C: usize>(
    w: *const u8,
    group_bytes: usize,
    acts: &Q8Acts,
    init: &[i32],
    t0: usize,
    out: OutPtr,
    n0: usize,
    valid: usize,
) {
    let nb = acts.nb;
    let k = nb * QK;
    unsafe {
        let x = acts.qs.as_ptr().add(t0 * k);
        let (d, s) = (acts.d.as_ptr().add(t0 * nb), acts.s.as_ptr().add(t0 * nb));
        let mut sum = [[_mm512_setzero_ps(); C]; R];
        for b in 0..nb {
            let wb = w.add(b * PACKED_BLOCK);
            let start: [__m512i; C] = std::array::from_fn(|c| {
                if MIN {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32(*init.get_unchecked((t0 + c) * nb + b))
                }
            });
            let mut acc = [start; R];
            for g in 0..8 {
                let wv: [__m512i; R] = std::array::from_fn(|r| {
                    _mm512_loadu_si512(wb.add(r * group_bytes + g * 64) as *const __m512i)
                });
                for c in 0..C {
                    let a = _mm512_set1_epi32(std::ptr::read_unaligned(
                        x.add(c * k + b * QK + g * 4) as *const i32,
                    ));
                    for r in 0..R {
                        acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], wv[r], a);
                    }
                }
            }
            for r in 0..R {
                let dw = _mm512_loadu_ps(wb.add(r * group_bytes + 512) as *const f32);
                for c in 0..C {
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*d.add(c * nb + b)));
                    sum[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][c]), scale, sum[r][c]);
                }
                if MIN {
                    let mw = _mm512_loadu_ps(wb.add(r * group_bytes + 576) as *const f32);
                    for c in 0..C {
                        let sx = _mm512_set1_ps(*s.add(c * nb + b));
                        sum[r][c] = _mm512_fmadd_ps(mw, sx, sum[r][c]);
                    }
                }
            }
        }
        for r in 0..R {
            let lanes = valid.saturating_sub(r * GROUP).min(GROUP);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
            for c in 0..C {
                let p = out.ptr.add((t0 + c) * out.ld + n0 + r * GROUP);
                _mm512_mask_storeu_ps(p, mask, sum[r][c]);
            }
        }
    }
}

/// Calls `tile::<MIN, R, C>` with `C` the (run-time) number of activation rows, up to 6.
#[inline(always)]
unsafe fn tile_rows<const MIN: bool, const R: usize>(
    rows_here: usize,
    w: *const u8,
    group_bytes: usize,
    acts: &Q8Acts,
    init: &[i32],
    t0: usize,
    out: OutPtr,
    n0: usize,
    valid: usize,
) {
    unsafe {
        let (g, a) = (group_bytes, acts);
        match rows_here {
            6 => tile::<MIN, R, 6>(w, g, a, init, t0, out, n0, valid),
            5 => tile::<MIN, R, 5>(w, g, a, init, t0, out, n0, valid),
            4 => tile::<MIN, R, 4>(w, g, a, init, t0, out, n0, valid),
            3 => tile::<MIN, R, 3>(w, g, a, init, t0, out, n0, valid),
            2 => tile::<MIN, R, 2>(w, g, a, init, t0, out, n0, valid),
            _ => tile::<MIN, R, 1>(w, g, a, init, t0, out, n0, valid),
        }
    }
}

/// `out[t][r0 + r] = Σ_k x[t][k] · w[r][k]` for a panel of `rows` `dtype` weight rows
/// packed by [`pack_q4`] and every activation row of `acts` (int8,
/// [`super::quantize_rows`]); `init` is [`offset_sums`] of `acts`.
///
/// # Safety
/// The CPU must have the AVX-512 level (F/BW/VL/VNNI); `packed` must come from
/// [`pack_q4`] with these `rows` and `acts.nb`; `out` as in [`super::qgemm`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm(
    dtype: DType,
    packed: &[u8],
    rows: usize,
    acts: Q8Acts,
    init: &[i32],
    out: OutPtr,
    r0: usize,
) {
    let nb = acts.nb;
    let min = dtype == DType::Q4_1;
    assert!(supports(dtype) && packed.len() >= packed_len(rows, nb));
    assert!(acts.qs.len() >= acts.rows() * nb * QK);
    assert!(min || init.len() >= acts.rows() * nb);
    let group_bytes = nb * PACKED_BLOCK;
    let groups = rows.div_ceil(GROUP);
    let t_rows = acts.rows();
    let mut t0 = 0;
    while t0 < t_rows {
        let here = (t_rows - t0).min(TILE_T);
        let mut gi = 0;
        while gi < groups {
            let pair = groups - gi >= 2;
            let n0 = gi * GROUP;
            let valid = rows - n0;
            // SAFETY: group gi (and gi + 1 for a pair) lies inside `packed`.
            unsafe {
                let w = packed.as_ptr().add(gi * group_bytes);
                let (a, n) = (&acts, r0 + n0);
                match (min, pair) {
                    (false, true) => {
                        tile_rows::<false, 2>(here, w, group_bytes, a, init, t0, out, n, valid)
                    }
                    (false, false) => {
                        tile_rows::<false, 1>(here, w, group_bytes, a, init, t0, out, n, valid)
                    }
                    (true, true) => {
                        tile_rows::<true, 2>(here, w, group_bytes, a, init, t0, out, n, valid)
                    }
                    (true, false) => {
                        tile_rows::<true, 1>(here, w, group_bytes, a, init, t0, out, n, valid)
                    }
                }
            }
            gi += if pair { 2 } else { 1 };
        }
        t0 += here;
    }
}
