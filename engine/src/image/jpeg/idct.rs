//! libjpeg's accurate integer inverse DCT (`JDCT_ISLOW`, jidctint.c): the Loeffler,
//! Ligtenberg and Moschytz algorithm with 13-bit fixed-point constants, 2 extra bits of
//! precision between the column and row passes, and libjpeg's range limiting. The same
//! arithmetic gives the same bytes; libjpeg-turbo's SIMD versions are bit-exact with it.

use super::huffman::Block;

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

// FIX(x) = round(x * 2^13).
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

/// libjpeg's post-IDCT range limit: the output (before the +128 level shift) is taken
/// modulo 1024 and mapped so that [-128, 127] → [0, 255], values up to 383 saturate to
/// 255 and down to -384 to 0 (beyond that, garbage data wraps around as in libjpeg).
static RANGE_LIMIT: [u8; 1024] = {
    let mut t = [0u8; 1024];
    let mut i = 0;
    while i < 1024 {
        t[i] = if i < 128 {
            (i + 128) as u8
        } else if i < 512 {
            255
        } else if i < 896 {
            0
        } else {
            (i - 896) as u8
        };
        i += 1;
    }
    t
};

#[inline(always)]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

#[inline(always)]
fn limit(x: i64) -> u8 {
    RANGE_LIMIT[(x & 1023) as usize]
}

/// The even and odd halves of one 1-D pass on `[x0..x7]`, returning the 8 outputs before
/// descaling, in order.
#[inline(always)]
fn butterfly(x: [i64; 8]) -> [i64; 8] {
    // Even part: the rotator is sqrt(2)*c(-6).
    let (z2, z3) = (x[2], x[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (x[0] + x[4]) << CONST_BITS;
    let tmp1 = (x[0] - x[4]) << CONST_BITS;
    let tmp10 = tmp0 + tmp3;
    let tmp13 = tmp0 - tmp3;
    let tmp11 = tmp1 + tmp2;
    let tmp12 = tmp1 - tmp2;

    // Odd part.
    let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    let t0 = t0 * FIX_0_298631336;
    let t1 = t1 * FIX_2_053119869;
    let t2 = t2 * FIX_3_072711026;
    let t3 = t3 * FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    let t0 = t0 + z1 + z3;
    let t1 = t1 + z2 + z4;
    let t2 = t2 + z2 + z3;
    let t3 = t3 + z1 + z4;

    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// Inverse-transforms one block of quantised coefficients (natural order) with its
/// quantisation table, writing 8 rows of 8 samples at `out[0..]`, `out[stride..]`, ...
pub(super) fn idct_islow(coef: &Block, quant: &[i32; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    // Pass 1: columns, into a work array scaled up by 2^PASS1_BITS.
    for col in 0..8 {
        let dq = |row: usize| i64::from(coef[row * 8 + col]) * i64::from(quant[row * 8 + col]);
        if (1..8).all(|row| coef[row * 8 + col] == 0) {
            // Only the DC term: every output is the same (this shortcut gives the same
            // values as the full computation).
            let dc = (dq(0) << PASS1_BITS) as i32;
            for row in 0..8 {
                ws[row * 8 + col] = dc;
            }
            continue;
        }
        let y = butterfly(std::array::from_fn(dq));
        for (row, v) in y.into_iter().enumerate() {
            ws[row * 8 + col] = descale(v, CONST_BITS - PASS1_BITS) as i32;
        }
    }
    // Pass 2: rows, descaled by 8 and 2^PASS1_BITS, level-shifted and range-limited.
    for (row, w) in ws.chunks_exact(8).enumerate() {
        let line = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            line.fill(limit(descale(i64::from(w[0]), PASS1_BITS + 3)));
            continue;
        }
        let y = butterfly(std::array::from_fn(|i| i64::from(w[i])));
        for (o, v) in line.iter_mut().zip(y) {
            *o = limit(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_blocks_and_range_limit() {
        let quant = [1i32; 64];
        let mut coef = [0i16; 64];
        let mut out = [0u8; 64];
        // DC 8 * v gives v + 128 everywhere.
        coef[0] = 8 * 10;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 138));
        coef[0] = -8 * 200;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 0));
        assert_eq!(limit(-129), 0);
        assert_eq!(limit(127), 255);
        assert_eq!(limit(383), 255);
        assert_eq!(limit(-384), 0);
    }

    /// The shortcuts for zero columns and rows equal the full computation.
    #[test]
    fn shortcuts_match_the_full_transform() {
        let mut coef = [0i16; 64];
        coef[0] = -357;
        coef[1] = 23;
        let quant: [i32; 64] = std::array::from_fn(|i| 1 + i as i32 % 7);
        let mut out = [0u8; 64];
        idct_islow(&coef, &quant, &mut out, 8);
        // Reference: the butterflies on every column and row.
        let mut ws = [0i64; 64];
        for col in 0..8 {
            let y = butterfly(std::array::from_fn(|r| {
                i64::from(coef[r * 8 + col]) * i64::from(quant[r * 8 + col])
            }));
            for r in 0..8 {
                ws[r * 8 + col] = descale(y[r], CONST_BITS - PASS1_BITS);
            }
        }
        for r in 0..8 {
            let y = butterfly(std::array::from_fn(|i| ws[r * 8 + i]));
            for c in 0..8 {
                assert_eq!(out[r * 8 + c], limit(descale(y[c], 18)));
            }
        }
    }
}
