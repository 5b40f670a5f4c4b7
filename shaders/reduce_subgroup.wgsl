// Workgroup reductions with subgroup operations (adapters with Features::SUBGROUP): one
// subgroup reduction, then the per-subgroup results through workgroup memory. Same
// contract as reduce_plain.wgsl. Subgroups are taken to be consecutive runs of
// local_invocation_index, as every Vulkan, Metal and D3D12 driver lays out 1-D workgroups;
// WGSL has no portable subgroup id yet. Subgroups have at least 4 lanes.

const RED_SLOTS: u32 = WG / 4u;

var<workgroup> red_f: array<f32, RED_SLOTS>;
var<workgroup> red_u: array<u32, RED_SLOTS>;
var<workgroup> red_v: array<vec4<f32>, RED_SLOTS>;

// Lanes in this invocation's subgroup (the whole workgroup when it is smaller than one).
fn sg_lanes() -> u32 {
    return subgroupAdd(1u);
}

fn wg_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    let n = sg_lanes();
    if (lid % n == 0u) {
        red_f[lid / n] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < (WG + n - 1u) / n; i = i + 1u) {
        t = t + red_f[i];
    }
    workgroupBarrier();
    return t;
}

fn wg_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    let s = subgroupAdd(v);
    let n = sg_lanes();
    if (lid % n == 0u) {
        red_v[lid / n] = s;
    }
    workgroupBarrier();
    var t = vec4<f32>(0.0);
    for (var i = 0u; i < (WG + n - 1u) / n; i = i + 1u) {
        t = t + red_v[i];
    }
    workgroupBarrier();
    return t;
}

fn wg_max(v: f32, lid: u32) -> f32 {
    let s = subgroupMax(v);
    let n = sg_lanes();
    if (lid % n == 0u) {
        red_f[lid / n] = s;
    }
    workgroupBarrier();
    var t = red_f[0];
    for (var i = 1u; i < (WG + n - 1u) / n; i = i + 1u) {
        t = max(t, red_f[i]);
    }
    workgroupBarrier();
    return t;
}

fn wg_argmax(v: f32, i: u32, lid: u32) -> u32 {
    // Threads without a candidate take part with the smallest value and the largest index.
    let has = i != 0xffffffffu;
    let vv = select(-3.40282347e38, v, has);
    let m = subgroupMax(vv);
    let c = subgroupMin(select(0xffffffffu, i, vv == m));
    let n = sg_lanes();
    if (lid % n == 0u) {
        red_f[lid / n] = m;
        red_u[lid / n] = c;
    }
    workgroupBarrier();
    var bv = red_f[0];
    var bi = red_u[0];
    for (var j = 1u; j < (WG + n - 1u) / n; j = j + 1u) {
        let ov = red_f[j];
        let oi = red_u[j];
        if (oi != 0xffffffffu && (bi == 0xffffffffu || ov > bv || (ov == bv && oi < bi))) {
            bv = ov;
            bi = oi;
        }
    }
    workgroupBarrier();
    return bi;
}
