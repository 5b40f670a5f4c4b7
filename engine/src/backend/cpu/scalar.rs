//! Scalar reference kernels: the plainest correct loop for every op. They are the truth the
//! fast CPU kernels and the GPU shaders are tested against, so clarity beats speed here.

use crate::backend::{Activation, AttentionShape, Grid, RopeShape};
use crate::model::config::RopeStyle;
use crate::tensor::HostTensor;

/// `out[r] = table[ids[r]]`, converted to f32.
pub fn embed(table: &HostTensor, ids: &[u32], out: &mut [f32]) {
    let (_, cols) = table.rows_cols();
    for (r, &id) in ids.iter().enumerate() {
        table.row_to_f32(id as usize, &mut out[r * cols..(r + 1) * cols]);
    }
}

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let cols = weight.len();
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let mean_sq = xr.iter().map(|v| v * v).sum::<f32>() / cols as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let cols = weight.len();
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let mean = xr.iter().sum::<f32>() / cols as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, o) in or.iter_mut().enumerate() {
            *o = (xr[i] - mean) * inv * weight[i] + bias[i];
        }
    }
}

/// `out[t][n] = Σ_k x[t][k] · w[n][k] + bias[n]`.
pub fn matmul(x: &[f32], w: &HostTensor, bias: Option<&[f32]>, out: &mut [f32]) {
    let (n_out, k) = w.rows_cols();
    let mut row = vec![0.0f32; k];
    for n in 0..n_out {
        w.row_to_f32(n, &mut row);
        for (t, xr) in x.chunks_exact(k).enumerate() {
            let mut acc = 0.0f32;
            for (a, b) in xr.iter().zip(&row) {
                acc += a * b;
            }
            out[t * n_out + n] = acc + bias.map_or(0.0, |b| b[n]);
        }
    }
}

/// The indices of the two elements rotated together by frequency `i` inside a head.
pub fn rope_pair(style: RopeStyle, rotary_dim: usize, i: usize) -> (usize, usize) {
    match style {
        RopeStyle::NeoX => (i, i + rotary_dim / 2),
        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
    }
}

/// Rotates each head of each row; `cos`/`sin` rows are positions, columns frequencies.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], shape: RopeShape, pos0: usize) {
    let half = shape.rotary_dim / 2;
    let cols = shape.n_heads * shape.head_dim;
    for (r, row) in x.chunks_exact_mut(cols).enumerate() {
        let p = pos0 + r;
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(shape.head_dim) {
            for i in 0..half {
                let (a, b) = rope_pair(shape.style, shape.rotary_dim, i);
                let (x1, x2) = (head[a], head[b]);
                head[a] = x1 * c[i] - x2 * s[i];
                head[b] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/// The key rows query row `t` may attend to.
pub fn visible_keys(
    shape: AttentionShape,
    pos0: usize,
    t: usize,
    n_keys: usize,
) -> std::ops::Range<usize> {
    if !shape.causal {
        return 0..n_keys;
    }
    let p = pos0 + t;
    let first = shape.window.map_or(0, |w| (p + 1).saturating_sub(w));
    first..p + 1
}

/// Attention for query rows over key/value rows (see `Backend::attention`).
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    pos0: usize,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let q_cols = shape.n_heads * hd;
    let kv_cols = shape.n_kv_heads * hd;
    let n_keys = k.len() / kv_cols;
    let group = shape.n_heads / shape.n_kv_heads;
    for (t, (qr, or)) in q
        .chunks_exact(q_cols)
        .zip(out.chunks_exact_mut(q_cols))
        .enumerate()
    {
        let keys = visible_keys(shape, pos0, t, n_keys);
        for h in 0..shape.n_heads {
            let kvh = h / group;
            let qh = &qr[h * hd..(h + 1) * hd];
            let mut scores: Vec<f32> = keys
                .clone()
                .map(|p| {
                    let kh = &k[p * kv_cols + kvh * hd..p * kv_cols + (kvh + 1) * hd];
                    qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * shape.scale
                })
                .collect();
            softmax(&mut scores);
            let oh = &mut or[h * hd..(h + 1) * hd];
            oh.fill(0.0);
            for (p, &w) in keys.clone().zip(&scores) {
                let vh = &v[p * kv_cols + kvh * hd..p * kv_cols + (kvh + 1) * hd];
                for (o, &x) in oh.iter_mut().zip(vh) {
                    *o += w * x;
                }
            }
        }
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// The index of the largest value, the first one on ties (torch.argmax); NaN and −∞
/// count as the lowest finite value, so a row of them gives 0.
pub fn argmax(x: &[f32]) -> u32 {
    let key = |v: f32| {
        if v.is_nan() || v < f32::MIN {
            f32::MIN
        } else {
            v
        }
    };
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if key(v) > key(x[best]) {
            best = i;
        }
    }
    best as u32
}

/// One activation value, with the formulas PyTorch uses.
pub fn activation(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Activation::Relu => x.max(0.0),
        Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
    }
}

pub fn activate(x: &mut [f32], act: Activation) {
    for v in x.iter_mut() {
        *v = activation(act, *v);
    }
}

pub fn gated(gate: &[f32], up: &[f32], act: Activation, out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = activation(act, g) * u;
    }
}

pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub fn mul_channels(x: &mut [f32], scale: &[f32]) {
    for row in x.chunks_exact_mut(scale.len()) {
        for (a, s) in row.iter_mut().zip(scale) {
            *a *= s;
        }
    }
}

pub fn mean_rows(x: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    let rows = x.len() / cols;
    for row in x.chunks_exact(cols) {
        add(out, row);
    }
    for v in out.iter_mut() {
        *v /= rows as f32;
    }
}

/// Output side of a 3×3 convolution with padding 1.
pub fn conv3x3_out(side: usize, stride: usize) -> usize {
    (side + 2 - 3) / stride + 1
}

pub fn depthwise_conv3x3(
    x: &[f32],
    grid: Grid,
    weight: &[f32],
    bias: Option<&[f32]>,
    stride: usize,
    out: &mut [f32],
) {
    let c = weight.len() / 9;
    let (oh, ow) = (conv3x3_out(grid.h, stride), conv3x3_out(grid.w, stride));
    for oy in 0..oh {
        for ox in 0..ow {
            let o = &mut out[(oy * ow + ox) * c..][..c];
            for (ch, v) in o.iter_mut().enumerate() {
                *v = bias.map_or(0.0, |b| b[ch]);
            }
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) = (
                        (oy * stride + ky) as isize - 1,
                        (ox * stride + kx) as isize - 1,
                    );
                    if iy < 0 || ix < 0 || iy >= grid.h as isize || ix >= grid.w as isize {
                        continue;
                    }
                    let inp = &x[(iy as usize * grid.w + ix as usize) * c..][..c];
                    for ch in 0..c {
                        o[ch] += weight[ch * 9 + ky * 3 + kx] * inp[ch];
                    }
                }
            }
        }
    }
}

/// The input range PyTorch's adaptive pooling averages for output index `i`.
pub fn adaptive_range(i: usize, in_size: usize, out_size: usize) -> std::ops::Range<usize> {
    let start = i * in_size / out_size;
    let end = ((i + 1) * in_size).div_ceil(out_size);
    start..end
}

pub fn adaptive_avg_pool(x: &[f32], cols: usize, grid: Grid, out_grid: Grid, out: &mut [f32]) {
    for oy in 0..out_grid.h {
        let ys = adaptive_range(oy, grid.h, out_grid.h);
        for ox in 0..out_grid.w {
            let xs = adaptive_range(ox, grid.w, out_grid.w);
            let o = &mut out[(oy * out_grid.w + ox) * cols..][..cols];
            o.fill(0.0);
            for y in ys.clone() {
                for xx in xs.clone() {
                    add(o, &x[(y * grid.w + xx) * cols..][..cols]);
                }
            }
            let n = (ys.len() * xs.len()) as f32;
            for v in o.iter_mut() {
                *v /= n;
            }
        }
    }
}
