// out[t][col0 + n] = Σ_k x[t][k] · W[n][k] (+ bias) for a few activation rows (decode):
// memory-bound, so every weight block is read once and dotted with all rows. One
// workgroup per weight row; its threads stride over the row's 32-element blocks and the
// partial sums meet in a workgroup reduction. Composed after a reduce_*.wgsl and a
// matmul_<dtype>.wgsl file (which provides w_block); `MAX_T` comes from the prelude.

struct Params {
    n: u32,
    k: u32,
    kb: u32,
    t: u32,
    out_cols: u32,
    col0: u32,
    has_bias: u32,
    w_stride: u32,
    w_soff: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// x[t][k..k+4], zero past the row end (weights are zero-padded there too).
fn x_quad(t: u32, k: u32) -> vec4<f32> {
    let i = t * P.k + k;
    return vec4<f32>(
        select(0.0, x[i], k < P.k),
        select(0.0, x[i + 1u], k + 1u < P.k),
        select(0.0, x[i + 2u], k + 2u < P.k),
        select(0.0, x[i + 3u], k + 3u < P.k),
    );
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= P.n) {
        return;
    }
    var acc: array<f32, MAX_T>;
    for (var b = lid; b < P.kb; b = b + WG) {
        var wb = w_block(row, b);
        for (var t = 0u; t < P.t; t = t + 1u) {
            var s = 0.0;
            for (var q = 0u; q < 8u; q = q + 1u) {
                s = s + dot(wb[q], x_quad(t, b * 32u + q * 4u));
            }
            acc[t] = acc[t] + s;
        }
    }
    for (var t = 0u; t < P.t; t = t + 1u) {
        let s = wg_sum(acc[t], lid);
        if (lid == 0u) {
            let col = P.col0 + row;
            var v = s;
            if (P.has_bias != 0u) {
                v = v + bias[col];
            }
            out[t * P.out_cols + col] = v;
        }
    }
}
