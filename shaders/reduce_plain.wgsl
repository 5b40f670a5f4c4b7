// Workgroup reductions, plain path: a tree in workgroup memory. Included before kernels
// that reduce; `WG` (the 1-D workgroup size, a power of two) comes from the prelude.
// Every function must be called by the whole workgroup in uniform control flow.

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> red_v: array<vec4<f32>, WG>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_f[lid] = red_f[lid] + red_f[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

// Four independent sums at once (one tree for four rows of a matrix–vector product).
fn wg_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    red_v[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_v[lid] = red_v[lid] + red_v[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_v[0];
    workgroupBarrier();
    return r;
}

fn wg_max(v: f32, lid: u32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_f[lid] = max(red_f[lid], red_f[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

// The index of the largest value, the lowest index on ties; `i` = 0xffffffff marks a thread
// without a candidate. Values must be finite (callers map NaN and -inf to -3.40282347e38).
fn wg_argmax(v: f32, i: u32, lid: u32) -> u32 {
    red_f[lid] = v;
    red_u[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let ov = red_f[lid + s];
            let oi = red_u[lid + s];
            let mv = red_f[lid];
            let mi = red_u[lid];
            if (oi != 0xffffffffu && (mi == 0xffffffffu || ov > mv || (ov == mv && oi < mi))) {
                red_f[lid] = ov;
                red_u[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}
