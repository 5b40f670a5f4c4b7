// out[r] = weight · (x[r] / sqrt(mean(x[r]²) + eps)), one workgroup per row, with the
// formula of the scalar reference (1 / sqrt, not inverseSqrt).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

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
    var s = 0.0;
    for (var c = lid; c < P.cols; c = c + WG) {
        let v = x[base + c];
        s = s + v * v;
    }
    let mean_sq = wg_sum(s, lid) / f32(P.cols);
    let inv = 1.0 / sqrt(mean_sq + P.eps);
    for (var c = lid; c < P.cols; c = c + WG) {
        out[base + c] = weight[c] * (x[base + c] * inv);
    }
}
