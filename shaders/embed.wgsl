// out[row0 + i] = table[ids[i]] converted to f32, for the table rows this part holds
// (large tables are split over several buffers; each part is one dispatch). One thread
// per four values of one id. Composed after a matmul_<dtype>.wgsl file (w_quad).

struct Params {
    n_ids: u32,
    k: u32,
    kb: u32,
    row0: u32,
    part_row0: u32,
    part_rows: u32,
    w_stride: u32,
    w_soff: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let quad = gid.x;
    let i = gid.y;
    let k = quad * 4u;
    if (i >= P.n_ids || k >= P.k) {
        return;
    }
    let id = ids[i];
    if (id < P.part_row0 || id >= P.part_row0 + P.part_rows) {
        return;
    }
    let v = w_quad(id - P.part_row0, k);
    let o = (P.row0 + i) * P.k + k;
    for (var j = 0u; j < 4u; j = j + 1u) {
        if (k + j < P.k) {
            out[o + j] = v[j];
        }
    }
}
