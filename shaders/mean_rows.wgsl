// out[c] = mean over rows of x[r][c] (global average pooling), one thread per column,
// summing rows in order and dividing once, exactly as the scalar reference.

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.cols) {
        return;
    }
    var s = 0.0;
    for (var r = 0u; r < P.rows; r = r + 1u) {
        s = s + x[r * P.cols + c];
    }
    out[c] = s / f32(P.rows);
}
