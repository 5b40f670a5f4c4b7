// Weight reader for f16 matrices: two halves per word (element 2i in the low half), rows
// padded with zeros to whole 32-element blocks. Conversion to f32 is exact.

fn w_quad(row: u32, k: u32) -> vec4<f32> {
    let i = row * P.w_stride + k / 2u;
    let a = unpack2x16float(w[i]);
    let b = unpack2x16float(w[i + 1u]);
    return vec4<f32>(a.x, a.y, b.x, b.y);
}

// For matvec.wgsl and matmul_tiled_f16.wgsl: the values themselves (f16 already) and a
// unit scale.
fn w_raw_quad(row: u32, k: u32) -> vec4<f32> {
    return w_quad(row, k);
}

fn w_dm(row: u32, b: u32) -> vec2<f32> {
    return vec2<f32>(1.0, 0.0);
}
