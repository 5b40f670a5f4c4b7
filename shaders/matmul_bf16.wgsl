// Weight reader for bf16 matrices: two values per word (element 2i in the low half), rows
// padded with zeros to whole 32-element blocks. A bf16 is the high half of an f32.

fn w_pair(word: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

fn w_quad(row: u32, k: u32) -> vec4<f32> {
    let i = row * P.w_stride + k / 2u;
    let a = w_pair(w[i]);
    let b = w_pair(w[i + 1u]);
    return vec4<f32>(a.x, a.y, b.x, b.y);
}


// For matvec.wgsl: the values themselves and a unit scale.
fn w_raw_quad(row: u32, k: u32) -> vec4<f32> {
    return w_quad(row, k);
}

fn w_dm(row: u32, b: u32) -> vec2<f32> {
    return vec2<f32>(1.0, 0.0);
}
