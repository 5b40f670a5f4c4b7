// The index of the largest value of each row (the first one on ties, as torch.argmax and
// the greedy sampler), one workgroup per row; greedy decoding reads back these 4 bytes
// instead of the vocabulary's logits. NaN and -inf count as the lowest finite value.

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

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
    var best = -3.40282347e38;
    var best_i = 0xffffffffu;
    for (var c = lid; c < P.cols; c = c + WG) {
        let raw = x[base + c];
        let bits = bitcast<u32>(raw);
        var v = raw;
        // NaN (exponent all ones, non-zero mantissa) and -inf, tested on the bits because
        // WGSL lets compilers assume finite floats: the lowest finite value.
        if ((bits & 0x7fffffffu) > 0x7f800000u || bits == 0xff800000u) {
            v = -3.40282347e38;
        }
        if (best_i == 0xffffffffu || v > best) {
            best = v;
            best_i = c;
        }
    }
    let i = wg_argmax(best, best_i, lid);
    if (lid == 0u) {
        out[r] = select(i, 0u, i == 0xffffffffu);
    }
}
