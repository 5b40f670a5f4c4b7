// Weight reader for f32 matrices. Rows are padded with zeros to whole 32-element blocks;
// row `r` starts at word `r * P.w_stride`.

fn w_quad(row: u32, k: u32) -> vec4<f32> {
    let i = row * P.w_stride + k;
    return vec4<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]), bitcast<f32>(w[i + 2u]), bitcast<f32>(w[i + 3u]));
}

// Elements 32·b .. 32·b + 32 of `row`, four at a time.
fn w_block(row: u32, b: u32) -> array<vec4<f32>, 8> {
    var r: array<vec4<f32>, 8>;
    for (var q = 0u; q < 8u; q = q + 1u) {
        r[q] = w_quad(row, b * 32u + q * 4u);
    }
    return r;
}
