// out[t][col0 + n] = Σ_k x[t][k] · W[n][k] (+ bias) for a few activation rows (decode):
// memory-bound, so every weight block is read once and dotted with all rows. A workgroup
// takes four consecutive weight rows; its threads stride over the rows' 32-element blocks
// and the four partial sums meet in one workgroup reduction (four rows per tree amortises
// the barriers). Weights are read as codes and a per-block (d, m) — value = code·d + m, the
// format's own dequantisation — so the scale is loaded once per block and no private
// array is indexed dynamically (which would spill to scratch memory on GPUs). Composed
// after a reduce_*.wgsl and a matmul_<dtype>.wgsl file (w_raw_quad, w_dm); `MAX_T`
// (1 for decode, 8 for short prompts) comes from the prelude.

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
    let row0 = (wid.x + wid.y * nwg.x) * 4u;
    if (row0 >= P.n) {
        return;
    }
    // acc[t][r]: activation row t against weight row row0 + r.
    var acc: array<vec4<f32>, MAX_T>;
    for (var b = lid; b < P.kb; b = b + WG) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            // Rows past the end repeat the last one; their sums are never written.
            let row = min(row0 + r, P.n - 1u);
            let dm = w_dm(row, b);
            for (var q = 0u; q < 8u; q = q + 1u) {
                let k = b * 32u + q * 4u;
                let wq = w_raw_quad(row, k) * dm.x + dm.y;
                for (var t = 0u; t < P.t; t = t + 1u) {
                    acc[t][r] = acc[t][r] + dot(wq, x_quad(t, k));
                }
            }
        }
    }
    for (var t = 0u; t < P.t; t = t + 1u) {
        let s = wg_sum4(acc[t], lid);
        if (lid == 0u) {
            for (var r = 0u; r < 4u; r = r + 1u) {
                let row = row0 + r;
                if (row < P.n) {
                    let col = P.col0 + row;
                    var v = s[r];
                    if (P.has_bias != 0u) {
                        v = v + bias[col];
                    }
                    out[t * P.out_cols + col] = v;
                }
            }
        }
    }
}
