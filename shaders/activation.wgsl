// Element-wise activations with the formulas PyTorch uses, in place (`activate`) and
// gated (`gated`: out = act(gate) · up, SwiGLU and friends). `P.act` selects:
// 0 SiLU, 1 exact GELU (erf), 2 tanh GELU, 3 quick GELU, 4 ReLU, 5 hardswish,
// 6 hardsigmoid — the order of `Activation` in the engine.

struct Params {
    n: u32,
    act: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;

// erf for f32: FreeBSD's s_erff.c (as in musl and Rust's libm, which the CPU reference
// uses), ported line by line; WGSL has no erf. Accurate to about 1 ulp.
const ERX: f32 = 8.4506291151e-01;
const EFX8: f32 = 1.0270333290e+00;
const PP0: f32 = 1.2837916613e-01;
const PP1: f32 = -3.2504209876e-01;
const PP2: f32 = -2.8481749818e-02;
const PP3: f32 = -5.7702702470e-03;
const PP4: f32 = -2.3763017452e-05;
const QQ1: f32 = 3.9791721106e-01;
const QQ2: f32 = 6.5022252500e-02;
const QQ3: f32 = 5.0813062117e-03;
const QQ4: f32 = 1.3249473704e-04;
const QQ5: f32 = -3.9602282413e-06;
const PA0: f32 = -2.3621185683e-03;
const PA1: f32 = 4.1485610604e-01;
const PA2: f32 = -3.7220788002e-01;
const PA3: f32 = 3.1834661961e-01;
const PA4: f32 = -1.1089469492e-01;
const PA5: f32 = 3.5478305072e-02;
const PA6: f32 = -2.1663755178e-03;
const QA1: f32 = 1.0642088205e-01;
const QA2: f32 = 5.4039794207e-01;
const QA3: f32 = 7.1828655899e-02;
const QA4: f32 = 1.2617121637e-01;
const QA5: f32 = 1.3637083583e-02;
const QA6: f32 = 1.1984500103e-02;
const RA0: f32 = -9.8649440333e-03;
const RA1: f32 = -6.9385856390e-01;
const RA2: f32 = -1.0558626175e+01;
const RA3: f32 = -6.2375331879e+01;
const RA4: f32 = -1.6239666748e+02;
const RA5: f32 = -1.8460508728e+02;
const RA6: f32 = -8.1287437439e+01;
const RA7: f32 = -9.8143291473e+00;
const SA1: f32 = 1.9651271820e+01;
const SA2: f32 = 1.3765776062e+02;
const SA3: f32 = 4.3456588745e+02;
const SA4: f32 = 6.4538726807e+02;
const SA5: f32 = 4.2900814819e+02;
const SA6: f32 = 1.0863500214e+02;
const SA7: f32 = 6.5702495575e+00;
const SA8: f32 = -6.0424413532e-02;
const RB0: f32 = -9.8649431020e-03;
const RB1: f32 = -7.9928326607e-01;
const RB2: f32 = -1.7757955551e+01;
const RB3: f32 = -1.6063638306e+02;
const RB4: f32 = -6.3756646729e+02;
const RB5: f32 = -1.0250950928e+03;
const RB6: f32 = -4.8351919556e+02;
const SB1: f32 = 3.0338060379e+01;
const SB2: f32 = 3.2579251099e+02;
const SB3: f32 = 1.5367296143e+03;
const SB4: f32 = 3.1998581543e+03;
const SB5: f32 = 2.5530502930e+03;
const SB6: f32 = 4.7452853394e+02;
const SB7: f32 = -2.2440952301e+01;

fn erf_f32(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let ix = bits & 0x7fffffffu;
    let neg = (bits >> 31u) != 0u;
    if (ix >= 0x7f800000u) {
        // erf(±inf) = ±1; NaN stays NaN.
        if (ix > 0x7f800000u) {
            return x;
        }
        return select(1.0, -1.0, neg);
    }
    if (ix < 0x3f580000u) {
        // |x| < 0.84375
        if (ix < 0x31800000u) {
            return 0.125 * (8.0 * x + EFX8 * x);
        }
        let z = x * x;
        let r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)));
        let s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))));
        return x + x * (r / s);
    }
    var y: f32;
    if (ix < 0x40c00000u) {
        // |x| < 6: 1 - erfc(|x|)
        let ax = abs(x);
        var erfc: f32;
        if (ix < 0x3fa00000u) {
            // |x| < 1.25
            let s = ax - 1.0;
            let p = PA0 + s * (PA1 + s * (PA2 + s * (PA3 + s * (PA4 + s * (PA5 + s * PA6)))));
            let q = 1.0 + s * (QA1 + s * (QA2 + s * (QA3 + s * (QA4 + s * (QA5 + s * QA6)))));
            erfc = 1.0 - ERX - p / q;
        } else {
            let s = 1.0 / (ax * ax);
            var r: f32;
            var big_s: f32;
            if (ix < 0x4036db6du) {
                // |x| < 1/0.35
                r = RA0 + s * (RA1 + s * (RA2 + s * (RA3 + s * (RA4 + s * (RA5 + s * (RA6 + s * RA7))))));
                big_s = 1.0 + s * (SA1 + s * (SA2 + s * (SA3 + s * (SA4 + s * (SA5 + s * (SA6 + s * (SA7 + s * SA8)))))));
            } else {
                r = RB0 + s * (RB1 + s * (RB2 + s * (RB3 + s * (RB4 + s * (RB5 + s * RB6)))));
                big_s = 1.0 + s * (SB1 + s * (SB2 + s * (SB3 + s * (SB4 + s * (SB5 + s * (SB6 + s * SB7))))));
            }
            let z = bitcast<f32>(bitcast<u32>(ax) & 0xffffe000u);
            erfc = exp(-z * z - 0.5625) * exp((z - ax) * (z + ax) + r / big_s) / ax;
        }
        y = 1.0 - erfc;
    } else {
        y = 1.0;
    }
    return select(y, -y, neg);
}

fn act(a: u32, v: f32) -> f32 {
    switch a {
        case 0u: {
            return v / (1.0 + exp(-v));
        }
        case 1u: {
            return 0.5 * v * (1.0 + erf_f32(v * 0.70710678118654752));
        }
        case 2u: {
            // tanh saturates to ±1 in f32 beyond |y| = 9; clamping keeps GPUs whose tanh
            // goes through exp from overflowing to NaN.
            let y = clamp(0.7978846 * (v + 0.044715 * v * v * v), -10.0, 10.0);
            return 0.5 * v * (1.0 + tanh(y));
        }
        case 3u: {
            return v / (1.0 + exp(-1.702 * v));
        }
        case 4u: {
            return max(v, 0.0);
        }
        case 5u: {
            return v * clamp(v + 3.0, 0.0, 6.0) / 6.0;
        }
        default: {
            return clamp(v + 3.0, 0.0, 6.0) / 6.0;
        }
    }
}

@compute @workgroup_size(64)
fn activate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < P.n) {
        x[i] = act(P.act, x[i]);
    }
}

// Here `x` is the output.
@compute @workgroup_size(64)
fn gated(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < P.n) {
        x[i] = act(P.act, gate[i]) * up[i];
    }
}
