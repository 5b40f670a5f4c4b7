// The tiled matmul of matmul_tiled.wgsl for adapters with SHADER_F16 and weights whose
// values f16 holds exactly: f16 matrices, and the integer codes of Q4_0/Q4_1/Q8_0 blocks
// (the block scale is applied once per 32-deep tile). Halving the weight tile's workgroup
// memory doubles the features per workgroup (32 rows × 128 features), so each x tile
// serves twice the outputs. Products and sums stay f32: for a block with scale d and
// offset m, Σ_k (q_k·d + m)·x_k = d·Σ_k q_k·x_k + m·Σ_k x_k. Composed after a
// matmul_<dtype>.wgsl file (w_raw_quad, w_dm).

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
const BN: u32 = 128u;

// xs[k][m]: the x tile, transposed.
var<workgroup> xs: array<f32, 1024>;
// ws[k][n / 4]: the weight codes, four features per vector.
var<workgroup> ws: array<vec4<f16>, 1024>;
// (d, m) of each feature's block in this tile.
var<workgroup> dm_s: array<vec2<f32>, 128>;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    let tx = lid % 16u;
    let ty = lid / 16u;
    // acc[row][feature half]: rows ty*2 + {0, 1}, features tx*8 + {0..4, 4..8}.
    var acc00 = vec4<f32>(0.0);
    var acc01 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    for (var b = 0u; b < P.kb; b = b + 1u) {
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
        for (var h = 0u; h < 4u; h = h + 1u) {
            let qi = lid + h * 256u;
            let r = qi / 8u;
            let kq = (qi % 8u) * 4u;
            var v = vec4<f32>(0.0);
            if (n0 + r < P.n) {
                v = w_raw_quad(n0 + r, b * 32u + kq);
            }
            let c = r / 4u;
            let lane = r % 4u;
            ws[kq * 32u + c][lane] = f16(v.x);
            ws[(kq + 1u) * 32u + c][lane] = f16(v.y);
            ws[(kq + 2u) * 32u + c][lane] = f16(v.z);
            ws[(kq + 3u) * 32u + c][lane] = f16(v.w);
        }
        if (lid < BN) {
            var dm = vec2<f32>(0.0);
            if (n0 + lid < P.n) {
                dm = w_dm(n0 + lid, b);
            }
            dm_s[lid] = dm;
        }
        workgroupBarrier();
        var p00 = vec4<f32>(0.0);
        var p01 = vec4<f32>(0.0);
        var p10 = vec4<f32>(0.0);
        var p11 = vec4<f32>(0.0);
        var xs0 = 0.0;
        var xs1 = 0.0;
        for (var kk = 0u; kk < 32u; kk = kk + 1u) {
            let a0 = xs[kk * BM + ty * 2u];
            let a1 = xs[kk * BM + ty * 2u + 1u];
            let w0 = vec4<f32>(ws[kk * 32u + tx * 2u]);
            let w1 = vec4<f32>(ws[kk * 32u + tx * 2u + 1u]);
            p00 = p00 + a0 * w0;
            p01 = p01 + a0 * w1;
            p10 = p10 + a1 * w0;
            p11 = p11 + a1 * w1;
            xs0 = xs0 + a0;
            xs1 = xs1 + a1;
        }
        let f = tx * 8u;
        let d0 = vec4<f32>(dm_s[f].x, dm_s[f + 1u].x, dm_s[f + 2u].x, dm_s[f + 3u].x);
        let d1 = vec4<f32>(dm_s[f + 4u].x, dm_s[f + 5u].x, dm_s[f + 6u].x, dm_s[f + 7u].x);
        let o0 = vec4<f32>(dm_s[f].y, dm_s[f + 1u].y, dm_s[f + 2u].y, dm_s[f + 3u].y);
        let o1 = vec4<f32>(dm_s[f + 4u].y, dm_s[f + 5u].y, dm_s[f + 6u].y, dm_s[f + 7u].y);
        acc00 = acc00 + d0 * p00 + o0 * xs0;
        acc01 = acc01 + d1 * p01 + o1 * xs0;
        acc10 = acc10 + d0 * p10 + o0 * xs1;
        acc11 = acc11 + d1 * p11 + o1 * xs1;
        workgroupBarrier();
    }
    let t0 = m0 + ty * 2u;
    for (var j = 0u; j < 8u; j = j + 1u) {
        let n = n0 + tx * 8u + j;
        if (n < P.n) {
            let col = P.col0 + n;
            var bv = 0.0;
            if (P.has_bias != 0u) {
                bv = bias[col];
            }
            var v0: f32;
            var v1: f32;
            if (j < 4u) {
                v0 = acc00[j];
                v1 = acc10[j];
            } else {
                v0 = acc01[j - 4u];
                v1 = acc11[j - 4u];
            }
            if (t0 < P.t) {
                out[t0 * P.out_cols + col] = v0 + bv;
            }
            if (t0 + 1u < P.t) {
                out[(t0 + 1u) * P.out_cols + col] = v1 + bv;
            }
        }
    }
}
