//! libjpeg's accurate integer inverse DCT (`JDCT_ISLOW`): the Loeffler, Ligtenberg and
//! Moschytz algorithm with 13-bit fixed-point constants and 2 extra bits of precision
//! between the column and the row pass.
//!
//! We follow the arithmetic of libjpeg-turbo's x86 SIMD versions (jidctint-sse2.asm and
//! jidctint-avx2.asm, what PIL runs on x86-64), which differ from the C code (jidctint.c)
//! only where values overflow 16 bits: dequantised coefficients, the sums `in0 ± in4`,
//! `in7 + in3`, `in5 + in1` and the pass outputs are 16-bit (wrapping, resp. saturating),
//! and the result is clamped to [0, 255] instead of going through the C code's mod-1024
//! range-limit table. No valid JPEG comes near those limits, so on valid files this is
//! the C code's result to the bit; on damaged files whose garbage coefficients overflow,
//! it is what PIL gives on x86-64 (libjpeg-turbo's C code, or other SIMD code such as
//! Arm's, may give other garbage there).

use super::huffman::Block;

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

// FIX(x) = round(x * 2^13).
const F_0_298: i32 = 2446;
const F_0_390: i32 = 3196;
const F_0_541: i32 = 4433;
const F_0_765: i32 = 6270;
const F_0_899: i32 = 7373;
const F_1_175: i32 = 9633;
const F_1_501: i32 = 12299;
const F_1_847: i32 = 15137;
const F_1_961: i32 = 16069;
const F_2_053: i32 = 16819;
const F_2_562: i32 = 20995;
const F_3_072: i32 = 25172;

/// A 16-bit wrapping result (the SIMD code's `paddw`, `pmullw`, `psllw`).
#[inline(always)]
fn wrap16(v: i32) -> i32 {
    i32::from(v as i16)
}

/// A 16-bit saturated result (`packssdw`).
#[inline(always)]
fn sat16(v: i32) -> i32 {
    v.clamp(-32768, 32767)
}

/// One 1-D pass on 8 lanes at once (lanes are columns in pass 1, rows in pass 2): `x[k]`
/// holds input k of every lane; outputs are descaled by `shift` and saturated to 16 bits.
/// The multiplications are grouped as the SIMD code's `pmaddwd` pairs (the same values as
/// the C code's grouping, exactly, since nothing overflows 32 bits there).
#[inline(always)]
fn pass(x: &[[i32; 8]; 8], shift: u32) -> [[i32; 8]; 8] {
    let mut out = [[0i32; 8]; 8];
    let round = 1i32 << (shift - 1);
    for l in 0..8 {
        let [in0, in1, in2, in3, in4, in5, in6, in7] = std::array::from_fn(|k| x[k][l]);
        // Even part.
        let tmp3 = in2 * (F_0_541 + F_0_765) + in6 * F_0_541;
        let tmp2 = in2 * F_0_541 + in6 * (F_0_541 - F_1_847);
        let tmp0 = wrap16(in0 + in4) << CONST_BITS;
        let tmp1 = wrap16(in0 - in4) << CONST_BITS;
        let tmp10 = tmp0.wrapping_add(tmp3);
        let tmp13 = tmp0.wrapping_sub(tmp3);
        let tmp11 = tmp1.wrapping_add(tmp2);
        let tmp12 = tmp1.wrapping_sub(tmp2);
        // Odd part.
        let z3 = wrap16(in7 + in3);
        let z4 = wrap16(in5 + in1);
        let (z3, z4) = (
            (z3 * (F_1_175 - F_1_961)).wrapping_add(z4 * F_1_175),
            (z3 * F_1_175).wrapping_add(z4 * (F_1_175 - F_0_390)),
        );
        let o0 = (in7 * (F_0_298 - F_0_899) + in1 * -F_0_899).wrapping_add(z3);
        let o1 = (in5 * (F_2_053 - F_2_562) + in3 * -F_2_562).wrapping_add(z4);
        let o2 = (in5 * -F_2_562 + in3 * (F_3_072 - F_2_562)).wrapping_add(z3);
        let o3 = (in7 * -F_0_899 + in1 * (F_1_501 - F_0_899)).wrapping_add(z4);
        let descale = |v: i32| sat16(v.wrapping_add(round) >> shift);
        out[0][l] = descale(tmp10.wrapping_add(o3));
        out[7][l] = descale(tmp10.wrapping_sub(o3));
        out[1][l] = descale(tmp11.wrapping_add(o2));
        out[6][l] = descale(tmp11.wrapping_sub(o2));
        out[2][l] = descale(tmp12.wrapping_add(o1));
        out[5][l] = descale(tmp12.wrapping_sub(o1));
        out[3][l] = descale(tmp13.wrapping_add(o0));
        out[4][l] = descale(tmp13.wrapping_sub(o0));
    }
    out
}

/// Inverse-transforms one block of quantised coefficients (natural order) with its
/// quantisation table (as libjpeg's 16-bit multiplier table), writing 8 rows of 8
/// samples at `out[0..]`, `out[stride..]`, ...
pub(super) fn idct_islow(coef: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
    let dq = |i: usize| wrap16(i32::from(coef[i]) * i32::from(quant[i]));
    let ws = if coef[8..].iter().all(|&c| c == 0) {
        // Rows 1-7 all zero: each column's transform is its first value, scaled.
        if coef[1..8].iter().all(|&c| c == 0) {
            // DC only: so is every row's; one value for the whole block.
            let v = wrap16(dq(0) << PASS1_BITS);
            let shift = CONST_BITS + PASS1_BITS + 3;
            let v = sat16(((v << CONST_BITS) + (1 << (shift - 1))) >> shift);
            let sample = (v.clamp(-128, 127) + 128) as u8;
            for row in out.chunks_mut(stride).take(8) {
                row[..8].fill(sample);
            }
            return;
        }
        let first: [i32; 8] = std::array::from_fn(|c| wrap16(dq(c) << PASS1_BITS));
        [first; 8]
    } else {
        let rows: [[i32; 8]; 8] = std::array::from_fn(|r| std::array::from_fn(|c| dq(r * 8 + c)));
        pass(&rows, CONST_BITS - PASS1_BITS)
    };
    // Pass 2 on the transposed work array: lanes are rows.
    let cols: [[i32; 8]; 8] = std::array::from_fn(|c| std::array::from_fn(|r| ws[r][c]));
    let y = pass(&cols, CONST_BITS + PASS1_BITS + 3);
    for (r, line) in out.chunks_mut(stride).take(8).enumerate() {
        for (c, o) in line[..8].iter_mut().enumerate() {
            // `packsswb` then + 128.
            *o = (y[c][r].clamp(-128, 127) + 128) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libjpeg's C code (jidctint.c) in 64-bit arithmetic, with its range-limit table.
    fn reference(coef: &Block, quant: &[i16; 64]) -> [u8; 64] {
        let butterfly = |x: [i64; 8]| -> [i64; 8] {
            let (f0541, f0765, f1847) = (4433i64, 6270, 15137);
            let z1 = (x[2] + x[6]) * f0541;
            let tmp2 = z1 - x[6] * f1847;
            let tmp3 = z1 + x[2] * f0765;
            let tmp0 = (x[0] + x[4]) << 13;
            let tmp1 = (x[0] - x[4]) << 13;
            let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
            let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
            let (z1, z2, z3, z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
            let z5 = (z3 + z4) * 9633;
            let (t0, t1, t2, t3) = (t0 * 2446, t1 * 16819, t2 * 25172, t3 * 12299);
            let (z1, z2) = (z1 * -7373, z2 * -20995);
            let z3 = z3 * -16069 + z5;
            let z4 = z4 * -3196 + z5;
            let (t0, t1, t2, t3) = (t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4);
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
        };
        let descale = |x: i64, n: u32| (x + (1 << (n - 1))) >> n;
        let mut ws = [0i64; 64];
        for c in 0..8 {
            let y = butterfly(std::array::from_fn(|r| {
                i64::from(coef[r * 8 + c]) * i64::from(quant[r * 8 + c])
            }));
            for r in 0..8 {
                ws[r * 8 + c] = i64::from(descale(y[r], 11) as i32);
            }
        }
        let mut out = [0u8; 64];
        for r in 0..8 {
            let y = butterfly(std::array::from_fn(|i| ws[r * 8 + i]));
            for c in 0..8 {
                let i = (descale(y[c], 18) & 1023) as usize;
                out[r * 8 + c] = match i {
                    0..128 => (i + 128) as u8,
                    128..512 => 255,
                    512..896 => 0,
                    _ => (i - 896) as u8,
                };
            }
        }
        out
    }

    /// Blocks as encoders make them (forward DCT of 8×8 pixels, quantised), from smooth to
    /// worst-case (0/255 checkerboards at quantiser 1): the same bytes as libjpeg's C code,
    /// so the 16-bit SIMD arithmetic never overflows on valid data.
    #[test]
    fn matches_the_c_code_on_encoded_blocks() {
        let mut seed = 0x1234_5678u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let cos = |x: usize, u: usize| {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            c * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()
        };
        for case in 0..4000 {
            let pixels: [f64; 64] = match case % 4 {
                // Noise over the whole range.
                0 => std::array::from_fn(|_| f64::from(next() % 256)),
                // Checkerboards and stripes of 0 and 255.
                1 => {
                    let pattern = next() % 4;
                    std::array::from_fn(|i| {
                        let (y, x) = (i / 8, i % 8);
                        let on = match pattern {
                            0 => (x + y) % 2 == 0,
                            1 => x % 2 == 0,
                            2 => y % 2 == 0,
                            _ => (x / 2 + y) % 2 == 0,
                        };
                        if on { 255.0 } else { 0.0 }
                    })
                }
                // Smooth gradients with a little noise.
                _ => {
                    let (a, b, c) = (next() % 256, next() % 64, next() % 64);
                    std::array::from_fn(|i| {
                        let v = f64::from(a) + f64::from(b) * (i / 8) as f64 / 8.0
                            - f64::from(c) * (i % 8) as f64 / 8.0
                            + f64::from(next() % 9)
                            - 4.0;
                        v.clamp(0.0, 255.0)
                    })
                }
            };
            let qmax = if case % 3 == 0 { 1 } else { 60 };
            let quant: [i16; 64] = std::array::from_fn(|_| 1 + (next() % qmax) as i16);
            let coef: Block = std::array::from_fn(|i| {
                let (v, u) = (i / 8, i % 8);
                let mut sum = 0.0;
                for (j, p) in pixels.iter().enumerate() {
                    sum += (p - 128.0) * cos(j / 8, v) * cos(j % 8, u);
                }
                (sum / 4.0 / f64::from(quant[i])).round() as i16
            });
            let mut out = [0u8; 64];
            idct_islow(&coef, &quant, &mut out, 8);
            assert_eq!(out, reference(&coef, &quant), "case {case}");
        }
    }

    #[test]
    fn flat_blocks() {
        let quant = [1i16; 64];
        let mut coef = [0i16; 64];
        let mut out = [0u8; 64];
        coef[0] = 8 * 10;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 138));
        coef[0] = -8 * 200;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 0));
    }
}
