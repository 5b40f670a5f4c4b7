//! Scalar reference kernels: the plainest correct loop for every op. They are the truth the
//! fast CPU kernels and the GPU shaders are tested against, so clarity beats speed here.

use crate::backend::{AttentionShape, RopeShape};
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

/// Causal attention for query rows at positions `pos0..`, over cache rows `0..=pos`.
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    shape: AttentionShape,
    pos0: usize,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let q_cols = shape.n_heads * hd;
    let kv_cols = shape.n_kv_heads * hd;
    let group = shape.n_heads / shape.n_kv_heads;
    for (t, (qr, or)) in q
        .chunks_exact(q_cols)
        .zip(out.chunks_exact_mut(q_cols))
        .enumerate()
    {
        let n_ctx = pos0 + t + 1;
        for h in 0..shape.n_heads {
            let kvh = h / group;
            let qh = &qr[h * hd..(h + 1) * hd];
            let mut scores: Vec<f32> = (0..n_ctx)
                .map(|p| {
                    let kh = &k_cache[p * kv_cols + kvh * hd..p * kv_cols + (kvh + 1) * hd];
                    qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * shape.scale
                })
                .collect();
            softmax(&mut scores);
            let oh = &mut or[h * hd..(h + 1) * hd];
            oh.fill(0.0);
            for (p, &w) in scores.iter().enumerate() {
                let vh = &v_cache[p * kv_cols + kvh * hd..p * kv_cols + (kvh + 1) * hd];
                for (o, &v) in oh.iter_mut().zip(vh) {
                    *o += w * v;
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

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
