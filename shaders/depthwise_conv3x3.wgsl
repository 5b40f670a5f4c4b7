// Depthwise 3×3 convolution, zero padding 1, stride 1 or 2, of an image-shaped activation
// ([h·w, channels], channels last). weight is [channels, 9], row c starting at word
// c · w_stride (weight rows are padded like every matrix). One thread per output value;
// the taps are added in the scalar reference's order (bias first, then row by row).

struct Params {
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    channels: u32,
    stride: u32,
    has_bias: u32,
    w_stride: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

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
    var acc = 0.0;
    if (P.has_bias != 0u) {
        acc = bias[ch];
    }
    for (var ky = 0u; ky < 3u; ky = ky + 1u) {
        for (var kx = 0u; kx < 3u; kx = kx + 1u) {
            // Input coordinates shifted by +1 so the padding test needs no signed values.
            let iy = oy * P.stride + ky;
            let ix = ox * P.stride + kx;
            if (iy >= 1u && ix >= 1u && iy <= P.h && ix <= P.w) {
                acc = acc + weight[ch * P.w_stride + ky * 3u + kx] * x[((iy - 1u) * P.w + ix - 1u) * c + ch];
            }
        }
    }
    out[i] = acc;
}
