// Row-wise softmax in place, one workgroup per row: maximum, exp(x - max), sum, divide —
// the steps of the scalar reference.

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

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
    var m = -3.40282347e38;
    for (var c = lid; c < P.cols; c = c + WG) {
        m = max(m, x[base + c]);
    }
    m = wg_max(m, lid);
    var s = 0.0;
    for (var c = lid; c < P.cols; c = c + WG) {
        let e = exp(x[base + c] - m);
        x[base + c] = e;
        s = s + e;
    }
    let sum = wg_sum(s, lid);
    for (var c = lid; c < P.cols; c = c + WG) {
        x[base + c] = x[base + c] / sum;
    }
}
