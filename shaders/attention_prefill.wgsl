// Attention for many query rows (prefill, the vision tower): a flash-attention tile. A
// workgroup takes WG consecutive query rows of one head, one row per thread, and walks
// the keys those rows may see in tiles; each tile of keys, then of values, is staged in
// workgroup memory and every thread folds it into its row with the online softmax
// (running maximum m, running sum l, output rescaled when m grows). Causal rows see keys
// first..=pos0 + t (first > 0 with a sliding window); bidirectional rows see every key.
// `HD` (head_dim rounded up to a multiple of 32) and `TILE` (keys per tile, with
// TILE·HD ≤ 3072 floats = 12 KiB) come from the prelude.

struct Params {
    rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
    causal: u32,
    window: u32,
    pos0: u32,
    n_keys: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> kv_s: array<f32, TILE * HD>;

fn visible(t: u32) -> vec2<u32> {
    if (P.causal == 0u) {
        return vec2<u32>(0u, P.n_keys);
    }
    let p = P.pos0 + t;
    var first = 0u;
    if (P.window != 0u && p + 1u > P.window) {
        first = p + 1u - P.window;
    }
    return vec2<u32>(first, min(p + 1u, P.n_keys));
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let h = wid.y;
    let t0 = wid.x * WG;
    let t = t0 + lid;
    let kvh = h / (P.n_heads / P.n_kv_heads);
    let hd = P.head_dim;
    let q_cols = P.n_heads * hd;
    let kv_cols = P.n_kv_heads * hd;
    let live = t < P.rows;

    var qr: array<f32, HD>;
    var o: array<f32, HD>;
    var s: array<f32, TILE>;
    // Loops over a head run to the compile-time HD (q is zero past head_dim, and so is
    // the tile, which is never written there), and loops over a tile to TILE, so drivers
    // can unroll them and keep qr, o and s in registers instead of scratch memory.
    if (live) {
        for (var d = 0u; d < HD; d = d + 1u) {
            if (d < hd) {
                qr[d] = q[t * q_cols + h * hd + d];
            }
        }
    }
    var mine = vec2<u32>(0u, 0u);
    if (live) {
        mine = visible(t);
    }
    // Keys any row of this workgroup sees: from the first row's start to the last row's end.
    let last = min(t0 + WG, P.rows) - 1u;
    let lo = visible(t0).x;
    let hi = visible(last).y;

    var m = -3.40282347e38;
    var l = 0.0;
    for (var k0 = lo; k0 < hi; k0 = k0 + TILE) {
        let n = min(TILE, hi - k0);
        for (var i = lid; i < n * hd; i = i + WG) {
            let j = i / hd;
            let d = i % hd;
            kv_s[j * HD + d] = k[(k0 + j) * kv_cols + kvh * hd + d];
        }
        workgroupBarrier();
        var m_new = m;
        for (var j = 0u; j < TILE; j = j + 1u) {
            let key = k0 + j;
            if (j < n && key >= mine.x && key < mine.y) {
                var acc = 0.0;
                for (var d = 0u; d < HD; d = d + 1u) {
                    acc = acc + qr[d] * kv_s[j * HD + d];
                }
                s[j] = acc * P.scale;
                m_new = max(m_new, s[j]);
            }
        }
        let corr = exp(m - m_new);
        l = l * corr;
        for (var d = 0u; d < HD; d = d + 1u) {
            o[d] = o[d] * corr;
        }
        m = m_new;
        for (var j = 0u; j < TILE; j = j + 1u) {
            let key = k0 + j;
            if (j < n && key >= mine.x && key < mine.y) {
                s[j] = exp(s[j] - m);
                l = l + s[j];
            } else {
                s[j] = 0.0;
            }
        }
        workgroupBarrier();
        for (var i = lid; i < n * hd; i = i + WG) {
            let j = i / hd;
            let d = i % hd;
            kv_s[j * HD + d] = v[(k0 + j) * kv_cols + kvh * hd + d];
        }
        workgroupBarrier();
        for (var j = 0u; j < TILE; j = j + 1u) {
            let p = s[j];
            if (p != 0.0) {
                for (var d = 0u; d < HD; d = d + 1u) {
                    o[d] = o[d] + p * kv_s[j * HD + d];
                }
            }
        }
        workgroupBarrier();
    }
    if (live) {
        for (var d = 0u; d < hd; d = d + 1u) {
            out[t * q_cols + h * hd + d] = o[d] / l;
        }
    }
}
