// Weight reader for ggml Q4_0 blocks (32 values: f16 scale d, 16 bytes of nibbles, value
// (q - 8)·d; low nibbles are elements 0..16, high nibbles 16..32). The blocks are kept
// bit for bit but split into two aligned regions at upload, because WGSL has no 8- or
// 16-bit loads and an 18-byte block straddles words: first the nibble bytes of every block
// (4 words per block, blocks row-major), then the scales, two f16 per word, from word
// P.w_soff on.

fn w_scale(blk: u32) -> f32 {
    let s = unpack2x16float(w[P.w_soff + blk / 2u]);
    return select(s.x, s.y, (blk & 1u) == 1u);
}

// Four nibbles (bytes 0..4 of `word` shifted by 0 or 4 bits) as values q - 8.
fn q4_values(word: u32, shift: u32) -> vec4<f32> {
    let q = (word >> shift) & 0x0f0f0f0fu;
    return vec4<f32>(vec4<u32>(q & 0xffu, (q >> 8u) & 0xffu, (q >> 16u) & 0xffu, q >> 24u)) - 8.0;
}

fn w_quad(row: u32, k: u32) -> vec4<f32> {
    let blk = row * P.kb + k / 32u;
    let j = k % 32u;
    let word = w[blk * 4u + (j % 16u) / 4u];
    return q4_values(word, select(0u, 4u, j >= 16u)) * w_scale(blk);
}

// For matvec.wgsl and matmul_tiled_f16.wgsl: the integer codes q - 8 (exact in f16) and
// the block's (d, m); value = code·d + m, the dequantisation formula itself.
fn w_raw_quad(row: u32, k: u32) -> vec4<f32> {
    let blk = row * P.kb + k / 32u;
    let j = k % 32u;
    return q4_values(w[blk * 4u + (j % 16u) / 4u], select(0u, 4u, j >= 16u));
}

fn w_dm(row: u32, b: u32) -> vec2<f32> {
    return vec2<f32>(w_scale(row * P.kb + b), 0.0);
}
