// Weight reader for ggml Q4_1 blocks (32 values: f16 d, f16 m, 16 bytes of nibbles, value
// q·d + m; nibble order as Q4_0). Split at upload like Q4_0: the nibble bytes of every
// block (4 words per block), then one word per block holding d (low half) and m (high
// half), from word P.w_soff on.

fn q4_raw(word: u32, shift: u32) -> vec4<f32> {
    let q = (word >> shift) & 0x0f0f0f0fu;
    return vec4<f32>(vec4<u32>(q & 0xffu, (q >> 8u) & 0xffu, (q >> 16u) & 0xffu, q >> 24u));
}

fn w_quad(row: u32, k: u32) -> vec4<f32> {
    let blk = row * P.kb + k / 32u;
    let j = k % 32u;
    let word = w[blk * 4u + (j % 16u) / 4u];
    let dm = unpack2x16float(w[P.w_soff + blk]);
    return q4_raw(word, select(0u, 4u, j >= 16u)) * dm.x + dm.y;
}

// For matvec.wgsl and matmul_tiled_f16.wgsl: the integer codes q (exact in f16) and the
// block's (d, m); value = code·d + m, the dequantisation formula itself.
fn w_raw_quad(row: u32, k: u32) -> vec4<f32> {
    let blk = row * P.kb + k / 32u;
    let j = k % 32u;
    return q4_raw(w[blk * 4u + (j % 16u) / 4u], select(0u, 4u, j >= 16u));
}

fn w_dm(row: u32, b: u32) -> vec2<f32> {
    return unpack2x16float(w[P.w_soff + row * P.kb + b]);
}
