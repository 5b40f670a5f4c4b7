//! ggml's k-quants that common GGUF files (`Q4_K_M`, `Q4_K_S`) mix in: Q4_K and Q6_K.
//! We only read them: at load they are dequantised and re-stored in a format the kernels
//! take (see `load::gguf`).

use half::f16;

/// Values per k-quant super-block.
pub const QK_K: usize = 256;
pub const Q4_K_BYTES: usize = 144;
pub const Q6_K_BYTES: usize = 210;

/// The 6-bit (scale, min) pair `j` of a Q4_K block's 12 packed scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn read_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Q4_K super-block: f16 d, f16 dmin, 12 scale bytes, 128 nibble bytes.
pub fn dequantize_q4_k(bytes: &[u8], out: &mut [f32]) {
    for (block, ob) in bytes
        .chunks_exact(Q4_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = read_f16(&block[0..2]);
        let dmin = read_f16(&block[2..4]);
        let scales = &block[4..16];
        let qs = &block[16..144];
        for chunk in 0..4 {
            let q = &qs[chunk * 32..chunk * 32 + 32];
            let (sc1, m1) = scale_min_k4(2 * chunk, scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
            let o = &mut ob[chunk * 64..chunk * 64 + 64];
            for l in 0..32 {
                o[l] = d1 * (q[l] & 0xF) as f32 - min1;
                o[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
            }
        }
    }
}

/// Q6_K super-block: 128 low-nibble bytes, 64 high-bit bytes, 16 i8 scales, f16 d (last).
pub fn dequantize_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (block, ob) in bytes
        .chunks_exact(Q6_K_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = read_f16(&block[208..210]);
        for half in 0..2 {
            let ql = &block[half * 64..half * 64 + 64];
            let qh = &block[128 + half * 32..128 + half * 32 + 32];
            let sc = &block[192 + half * 8..192 + half * 8 + 8];
            let o = &mut ob[half * 128..half * 128 + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let s = |k: usize| sc[is + k] as i8 as f32;
                o[l] = d * s(0) * q1 as f32;
                o[l + 32] = d * s(2) * q2 as f32;
                o[l + 64] = d * s(4) * q3 as f32;
                o[l + 96] = d * s(6) * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_decodes_hand_built_block() {
        let mut b = vec![0u8; Q4_K_BYTES];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        // (scale, min) of sub-block 0 = (2, 4); of sub-block 1 = (3, 0).
        b[4] = 2;
        b[8] = 4;
        b[5] = 3;
        b[16] = 0x7 | (0x9 << 4);
        let mut out = vec![0.0; QK_K];
        dequantize_q4_k(&b, &mut out);
        assert_eq!(out[0], 0.5 * 2.0 * 7.0 - 0.25 * 4.0);
        assert_eq!(out[32], 0.5 * 3.0 * 9.0);
        assert_eq!(out[1], -1.0);
    }

    #[test]
    fn q6_k_decodes_hand_built_block() {
        let mut b = vec![0u8; Q6_K_BYTES];
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[192] = 2; // scale of elements 0..16
        b[194] = (-1i8) as u8; // scale of elements 32..48
        b[0] = 0x5; // low nibble of element 0
        b[128] = 0x2 | (0x1 << 2); // high bits: element 0 gets 2, element 32 gets 1
        let mut out = vec![0.0; QK_K];
        dequantize_q6_k(&b, &mut out);
        assert_eq!(out[0], 0.5 * 2.0 * ((0x5 | (2 << 4)) - 32) as f32);
        assert_eq!(out[32], -0.5 * ((1 << 4) - 32) as f32);
    }
}
