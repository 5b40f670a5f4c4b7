// Weight reader for ggml Q8_0 blocks (32 values: f16 scale d, 32 signed bytes, value q·d).
// Split at upload like Q4_0: the 32 bytes of every block (8 words per block), then the
// scales, two f16 per word, from word P.w_soff on.

fn w_scale(blk: u32) -> f32 {
    let s = unpack2x16float(w[P.w_soff + blk / 2u]);
    return select(s.x, s.y, (blk & 1u) == 1u);
}

// The four signed bytes of `word`, sign-extended by arithmetic shifts.
fn q8_values(word: u32) -> vec4<f32> {
    let v = bitcast<i32>(word);
    return vec4<f32>(vec4<i32>((v << 24u) >> 24u, (v << 16u) >> 24u, (v << 8u) >> 24u, v >> 24u));
}

fn w_quad(row: u32, k: u32) -> vec4<f32> {
    let blk = row * P.kb + k / 32u;
    return q8_values(w[blk * 8u + (k % 32u) / 4u]) * w_scale(blk);
}

// For matvec.wgsl and matmul_tiled_f16.wgsl: the integer codes q (exact in f16) and the
// block's (d, m); value = code·d + m, the dequantisation formula itself.
fn w_raw_quad(row: u32, k: u32) -> vec4<f32> {
    let blk = row * P.kb + k / 32u;
    return q8_values(w[blk * 8u + (k % 32u) / 4u]);
}

fn w_dm(row: u32, b: u32) -> vec2<f32> {
    return vec2<f32>(w_scale(row * P.kb + b), 0.0);
}
