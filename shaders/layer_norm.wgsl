// out[r] = (x[r] - mean) / sqrt(var + eps) · weight + bias with the biased variance, one
// workgroup per row; mean first, then the variance around it (two passes, as the scalar
// reference, which keeps the variance exact for rows with a large mean).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= P.rows) {
        return;
    }
    let base = r * P.cols;
    let n = f32(P.cols);
    var s = 0.0;
    for (var c = lid; c < P.cols; c = c + WG) {
        s = s + x[base + c];
    }
    let mean = wg_sum(s, lid) / n;
    var d2 = 0.0;
    for (var c = lid; c < P.cols; c = c + WG) {
        let d = x[base + c] - mean;
        d2 = d2 + d * d;
    }
    let inv = 1.0 / sqrt(wg_sum(d2, lid) / n + P.eps);
    for (var c = lid; c < P.cols; c = c + WG) {
        out[base + c] = (x[base + c] - mean) * inv * weight[c] + bias[c];
    }
}
