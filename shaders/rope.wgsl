// Rotary position embedding in place: for row r (position pos0 + r), every head and every
// frequency i < rotary_dim / 2 rotates the pair (a, b) — (i, i + rotary_dim/2) in the
// NeoX / Hugging Face layout, (2i, 2i + 1) in the interleaved (GPT-J / Meta) layout.
// Dimensions past rotary_dim (partial rotary) are left alone. One thread per pair.

struct Params {
    rows: u32,
    n_heads: u32,
    head_dim: u32,
    half: u32,
    interleaved: u32,
    pos0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let per_row = P.n_heads * P.half;
    if (idx >= P.rows * per_row) {
        return;
    }
    let r = idx / per_row;
    let h = (idx % per_row) / P.half;
    let i = idx % P.half;
    var a = i;
    var b = i + P.half;
    if (P.interleaved != 0u) {
        a = 2u * i;
        b = 2u * i + 1u;
    }
    let base = r * P.n_heads * P.head_dim + h * P.head_dim;
    let t = (P.pos0 + r) * P.half + i;
    let c = cos_t[t];
    let s = sin_t[t];
    let x1 = x[base + a];
    let x2 = x[base + b];
    x[base + a] = x1 * c - x2 * s;
    x[base + b] = x2 * c + x1 * s;
}
