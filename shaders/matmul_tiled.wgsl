// out[t][col0 + n] = Σ_k x[t][k] · W[n][k] (+ bias) for many activation rows (prefill,
// vision tower): compute-bound, so a workgroup computes a 32-row × 64-feature tile and
// reuses every dequantised weight value for 32 rows. Tiles of x and W, 32 deep (one
// quantised block), are staged in workgroup memory (12 KiB); each of the 256 threads
// accumulates 2 rows × 4 features in f32. Composed after a matmul_<dtype>.wgsl file
// (which provides w_quad).

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

const BM: u32 = 32u;
const BN: u32 = 64u;

// xs[k][m]: the x tile, transposed so a thread reads its two rows next to each other.
var<workgroup> xs: array<f32, 1024>;
// ws[k][n / 4]: the weight tile, four features per vector.
var<workgroup> ws: array<vec4<f32>, 512>;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    for (var b = 0u; b < P.kb; b = b + 1u) {
        // x tile: 32 rows × 8 quads, one quad per thread.
        {
            let r = lid / 8u;
            let kq = (lid % 8u) * 4u;
            let t = m0 + r;
            let k = b * 32u + kq;
            let i = t * P.k + k;
            let ok = t < P.t;
            xs[kq * BM + r] = select(0.0, x[i], ok && k < P.k);
            xs[(kq + 1u) * BM + r] = select(0.0, x[i + 1u], ok && k + 1u < P.k);
            xs[(kq + 2u) * BM + r] = select(0.0, x[i + 2u], ok && k + 2u < P.k);
            xs[(kq + 3u) * BM + r] = select(0.0, x[i + 3u], ok && k + 3u < P.k);
        }
        // W tile: 64 rows × 8 quads, two quads per thread.
        for (var h = 0u; h < 2u; h = h + 1u) {
            let qi = lid + h * 256u;
            let r = qi / 8u;
            let kq = (qi % 8u) * 4u;
            var v = vec4<f32>(0.0);
            if (n0 + r < P.n) {
                v = w_quad(n0 + r, b * 32u + kq);
            }
            let c = r / 4u;
            let lane = r % 4u;
            ws[kq * 16u + c][lane] = v.x;
            ws[(kq + 1u) * 16u + c][lane] = v.y;
            ws[(kq + 2u) * 16u + c][lane] = v.z;
            ws[(kq + 3u) * 16u + c][lane] = v.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk = kk + 1u) {
            let a0 = xs[kk * BM + ty * 2u];
            let a1 = xs[kk * BM + ty * 2u + 1u];
            let wv = ws[kk * 16u + tx];
            acc0 = acc0 + a0 * wv;
            acc1 = acc1 + a1 * wv;
        }
        workgroupBarrier();
    }
    let t0 = m0 + ty * 2u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let n = n0 + tx * 4u + j;
        if (n < P.n) {
            let col = P.col0 + n;
            var bv = 0.0;
            if (P.has_bias != 0u) {
                bv = bias[col];
            }
            if (t0 < P.t) {
                out[t0 * P.out_cols + col] = acc0[j] + bv;
            }
            if (t0 + 1u < P.t) {
                out[(t0 + 1u) * P.out_cols + col] = acc1[j] + bv;
            }
        }
    }
}
