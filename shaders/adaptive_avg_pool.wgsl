// PyTorch AdaptiveAvgPool2d of an image-shaped activation: output cell (oy, ox) averages
// input rows floor(oy·h/oh) .. ceil((oy+1)·h/oh) and the same for columns. One thread per
// output value, summing in the scalar reference's order.

struct Params {
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    channels: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let c = P.channels;
    if (i >= P.out_h * P.out_w * c) {
        return;
    }
    let ch = i % c;
    let cell = i / c;
    let oy = cell / P.out_w;
    let ox = cell % P.out_w;
    let y0 = oy * P.h / P.out_h;
    let y1 = ((oy + 1u) * P.h + P.out_h - 1u) / P.out_h;
    let x0 = ox * P.w / P.out_w;
    let x1 = ((ox + 1u) * P.w + P.out_w - 1u) / P.out_w;
    var acc = 0.0;
    for (var y = y0; y < y1; y = y + 1u) {
        for (var xx = x0; xx < x1; xx = xx + 1u) {
            acc = acc + x[(y * P.w + xx) * c + ch];
        }
    }
    out[i] = acc / f32((y1 - y0) * (x1 - x0));
}
