// Weight reader for f32 matrices. Rows are padded with zeros to whole 32-element blocks;
// row `r` starts at word `r * P.w_stride`.

fn w_quad(row: u32, k: u32) -> vec4<f32> {
    let i = row * P.w_stride + k;
    return vec4<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]), bitcast<f32>(w[i + 2u]), bitcast<f32>(w[i + 3u]));
}


// For matvec.wgsl: the values themselves and a unit scale.
fn w_raw_quad(row: u32, k: u32) -> vec4<f32> {
    return w_quad(row, k);
}

fn w_dm(row: u32, b: u32) -> vec2<f32> {
    return vec2<f32>(1.0, 0.0);
}
