// Attention for a few query rows over the KV cache (decode), flash-decoding style: the
// visible keys of each (row, head) are cut into chunks of WG keys; `split` computes, per
// chunk, the local score maximum m, the sum l of exp(s - m) and the unnormalised output
// Σ exp(s - m)·v; `combine` rescales the chunks to the global maximum and normalises.
// Chunks spread a long context over many workgroups instead of one per head.
// Composed after a reduce_*.wgsl file.
//
// Query row t sits at position pos0 + t; causal rows see keys first..=pos0 + t, where
// first = pos0 + t + 1 - window with a sliding window; bidirectional rows see every key.

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
    n_chunks: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
// Per (row, head, chunk): m, l, then head_dim output values.
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

const MAX_HEAD_DIM: u32 = 256u;

var<workgroup> q_s: array<f32, MAX_HEAD_DIM>;
var<workgroup> p_s: array<f32, WG>;

// The visible key range [first, end) of query row t.
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
fn split(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= P.rows * P.n_heads * P.n_chunks) {
        return;
    }
    let c = g % P.n_chunks;
    let h = (g / P.n_chunks) % P.n_heads;
    let t = g / (P.n_chunks * P.n_heads);
    let kvh = h / (P.n_heads / P.n_kv_heads);
    let hd = P.head_dim;
    let q_cols = P.n_heads * hd;
    let kv_cols = P.n_kv_heads * hd;

    for (var d = lid; d < hd; d = d + WG) {
        q_s[d] = q[t * q_cols + h * hd + d];
    }
    workgroupBarrier();

    let range = visible(t);
    let k0 = range.x + c * WG;
    let key = k0 + lid;
    let valid = key < range.y;
    var s = -3.40282347e38;
    if (valid) {
        let kb = key * kv_cols + kvh * hd;
        var acc = 0.0;
        for (var d = 0u; d < hd; d = d + 1u) {
            acc = acc + q_s[d] * k[kb + d];
        }
        s = acc * P.scale;
    }
    let m = wg_max(s, lid);
    var p = 0.0;
    if (valid) {
        p = exp(s - m);
    }
    let l = wg_sum(p, lid);
    p_s[lid] = p;
    workgroupBarrier();

    let out = g * (hd + 2u);
    if (lid == 0u) {
        part[out] = m;
        part[out + 1u] = l;
    }
    var n = 0u;
    if (range.y > k0) {
        n = min(range.y - k0, WG);
    }
    for (var d = lid; d < hd; d = d + WG) {
        var o = 0.0;
        for (var j = 0u; j < n; j = j + 1u) {
            o = o + p_s[j] * v[(k0 + j) * kv_cols + kvh * hd + d];
        }
        part[out + 2u + d] = o;
    }
}

// Written by `combine` only: the normalised output rows.
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn combine(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= P.rows * P.n_heads) {
        return;
    }
    let h = g % P.n_heads;
    let t = g / P.n_heads;
    let hd = P.head_dim;
    let base = g * P.n_chunks;
    // Chunks past the row's visible keys have l = 0 and take no part.
    var m = -3.40282347e38;
    for (var c = 0u; c < P.n_chunks; c = c + 1u) {
        let pc = (base + c) * (hd + 2u);
        if (part[pc + 1u] > 0.0) {
            m = max(m, part[pc]);
        }
    }
    var l = 0.0;
    for (var c = 0u; c < P.n_chunks; c = c + 1u) {
        let pc = (base + c) * (hd + 2u);
        if (part[pc + 1u] > 0.0) {
            l = l + exp(part[pc] - m) * part[pc + 1u];
        }
    }
    for (var d = lid; d < hd; d = d + WG) {
        var o = 0.0;
        for (var c = 0u; c < P.n_chunks; c = c + 1u) {
            let pc = (base + c) * (hd + 2u);
            if (part[pc + 1u] > 0.0) {
                o = o + exp(part[pc] - m) * part[pc + 2u + d];
            }
        }
        out[t * P.n_heads * hd + h * hd + d] = o / l;
    }
}
