//! Every GPU op against the CPU scalar reference, on random and ragged shapes, on the
//! plain path and on the adapter's subgroup/f16 variants. Needs a GPU adapter (Mesa's
//! lavapipe in CI); without one the tests skip with a message, or fail under
//! POCKETVLM_STRICT=1.

use std::sync::OnceLock;

use super::*;
use crate::backend::cpu::scalar;
use crate::tensor::{DType, Storage};

fn strict() -> bool {
    std::env::var("POCKETVLM_STRICT").is_ok_and(|v| v == "1")
}

/// The backends under test: the plain path, the adapter's best path, and the plain path
/// with weights split over 4 KiB buffers.
fn backends() -> &'static [(&'static str, GpuBackend)] {
    static B: OnceLock<Vec<(&'static str, GpuBackend)>> = OnceLock::new();
    B.get_or_init(|| {
        let plain = match GpuBackend::new(&GpuOptions::plain()) {
            Ok(b) => b,
            Err(e) => {
                if strict() {
                    panic!("POCKETVLM_STRICT=1 and no GPU adapter: {e} (tests/run.sh installs lavapipe)");
                }
                eprintln!("SKIPPED: no GPU adapter ({e}); install mesa-vulkan-drivers");
                return vec![];
            }
        };
        let mut v = vec![("plain", plain)];
        if let Ok(best) = GpuBackend::new(&GpuOptions::default())
            && (best.uses_f16() || best.uses_subgroups())
        {
            v.push(("subgroups/f16", best));
        }
        if let Ok(split) = GpuBackend::new(&GpuOptions {
            max_weight_part_bytes: Some(4096),
            ..GpuOptions::plain()
        }) {
            v.push(("split weights", split));
        }
        for (name, be) in &v {
            eprintln!("GPU tests, {name}: {}", be.name());
        }
        v
    })
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn host(dtype: DType, shape: Vec<usize>, v: &[f32]) -> HostTensor {
    HostTensor::new(
        dtype,
        shape,
        Storage::from_bytes(&crate::quant::quantize(dtype, v)),
    )
}

fn upload(be: &GpuBackend, rows: usize, cols: usize, data: &[f32]) -> GpuTensor {
    let mut t = be.tensor(rows, cols);
    be.write(&mut t, data);
    t
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= abs + rel * b.abs(),
            "{what}: element {i}: gpu {a} vs cpu {b}"
        );
    }
}

#[test]
fn matmul_matches_scalar_for_every_format_and_path() {
    for (name, be) in backends() {
        for dtype in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
        ] {
            let shapes: &[(usize, usize, usize)] = if dtype.is_quantized() {
                &[
                    (1, 1, 32),
                    (1, 70, 96),
                    (3, 300, 64),
                    (8, 33, 256),
                    (9, 65, 32),
                    (70, 130, 96),
                ]
            } else {
                &[
                    (1, 1, 1),
                    (1, 7, 33),
                    (2, 300, 17),
                    (8, 9, 80),
                    (9, 65, 129),
                    (70, 130, 12),
                ]
            };
            for &(t, n, k) in shapes {
                let w = host(dtype, vec![n, k], &rand_vec(n * k, (n * 31 + k) as u64));
                let x = rand_vec(t * k, t as u64 + 7);
                let bias = rand_vec(n, 99);
                for with_bias in [false, true] {
                    let mut want = vec![0.0; t * n];
                    scalar::matmul(&x, &w, with_bias.then_some(&bias[..]), &mut want);
                    let gw = be.weight(w.clone()).unwrap();
                    let gb = be.weight(HostTensor::from_f32(vec![n], &bias)).unwrap();
                    let gx = upload(be, t, k, &x);
                    let mut out = be.tensor(t, n);
                    be.matmul(&gx, &gw, with_bias.then_some(&gb), &mut out);
                    let tol = 1e-5 * (k as f32).sqrt();
                    assert_close(
                        &format!("{name} {dtype} {t}×{n}×{k} bias={with_bias}"),
                        &be.read(&out),
                        &want,
                        tol,
                        tol,
                    );
                }
            }
        }
    }
}

#[test]
fn embedding_rows_match_for_every_format() {
    for (name, be) in backends() {
        for dtype in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
        ] {
            let (rows, cols) = if dtype.is_quantized() {
                (300, 64)
            } else {
                (300, 37)
            };
            let table = host(dtype, vec![rows, cols], &rand_vec(rows * cols, 5));
            let ids = [0u32, 299, 17, 17, 150, 1];
            let mut want = vec![0.0; (ids.len() + 2) * cols];
            scalar::embed(&table, &ids, &mut want[2 * cols..]);
            let gt = be.weight(table).unwrap();
            let mut out = be.tensor(ids.len() + 2, cols);
            be.embed(&gt, &ids, &mut out, 2);
            assert_close(
                &format!("{name} {dtype} embed"),
                &be.read(&out),
                &want,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn norms_match_on_ragged_rows() {
    for (name, be) in backends() {
        for &(rows, cols) in &[(1, 1), (1, 80), (5, 7), (3, 300), (2, 1000)] {
            let x: Vec<f32> = rand_vec(rows * cols, 3)
                .iter()
                .map(|v| v * 4.0 + 1.5)
                .collect();
            let w = rand_vec(cols, 4);
            let b = rand_vec(cols, 5);
            let gx = upload(be, rows, cols, &x);
            let gw = be.weight(HostTensor::from_f32(vec![cols], &w)).unwrap();
            let gb = be.weight(HostTensor::from_f32(vec![cols], &b)).unwrap();

            let mut want = vec![0.0; rows * cols];
            scalar::rms_norm(&x, &w, 1e-6, &mut want);
            let mut out = be.tensor(rows, cols);
            be.rms_norm(&gx, &gw, 1e-6, &mut out);
            assert_close(
                &format!("{name} rms {rows}×{cols}"),
                &be.read(&out),
                &want,
                1e-5,
                1e-5,
            );

            scalar::layer_norm(&x, &w, &b, 1e-5, &mut want);
            be.layer_norm(&gx, &gw, &gb, 1e-5, &mut out);
            assert_close(
                &format!("{name} ln {rows}×{cols}"),
                &be.read(&out),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn rope_matches_both_layouts_and_partial_rotary() {
    for (name, be) in backends() {
        for style in [RopeStyle::NeoX, RopeStyle::Interleaved] {
            for &(rows, heads, hd, rot, pos0) in &[
                (1, 3, 8, 8, 5),
                (7, 2, 10, 4, 0),
                (4, 4, 80, 32, 9),
                (2, 1, 6, 2, 1),
            ] {
                let shape = RopeShape {
                    n_heads: heads,
                    head_dim: hd,
                    rotary_dim: rot,
                    style,
                };
                let half = rot / 2;
                let positions = pos0 + rows + 3;
                let cos = rand_vec(positions * half, 11);
                let sin = rand_vec(positions * half, 12);
                let mut x = rand_vec(rows * heads * hd, 13);
                let gx0 = x.clone();
                scalar::rope(&mut x, &cos, &sin, shape, pos0);
                let mut gx = upload(be, rows, heads * hd, &gx0);
                let gc = upload(be, positions, half, &cos);
                let gs = upload(be, positions, half, &sin);
                be.rope(&mut gx, &gc, &gs, shape, pos0);
                assert_close(
                    &format!("{name} {style:?} rope {rows}×{heads}×{hd}/{rot}"),
                    &be.read(&gx),
                    &x,
                    1e-6,
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn attention_matches_on_decode_and_prefill_shapes() {
    for (name, be) in backends() {
        // (rows, pos0, heads, kv heads, head_dim, causal, window)
        type Case = (usize, usize, usize, usize, usize, bool, Option<usize>);
        let cases: &[Case] = &[
            (1, 0, 4, 2, 8, true, None),
            (1, 150, 4, 4, 16, true, None),
            (1, 200, 2, 1, 80, true, Some(70)),
            (3, 90, 6, 3, 5, true, None),
            (4, 0, 2, 2, 13, true, Some(2)),
            (5, 3, 6, 3, 5, true, Some(3)),
            (70, 0, 2, 1, 64, true, None),
            (130, 20, 3, 3, 96, true, Some(50)),
            (100, 0, 4, 4, 16, false, None),
            (65, 0, 2, 2, 256, false, None),
            (2, 0, 2, 2, 24, false, None),
        ];
        for &(rows, pos0, heads, kv, hd, causal, window) in cases {
            let shape = AttentionShape {
                n_heads: heads,
                n_kv_heads: kv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                causal,
                window,
            };
            let n_keys = if causal { pos0 + rows } else { rows };
            let q: Vec<f32> = rand_vec(rows * heads * hd, 1)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let k: Vec<f32> = rand_vec(n_keys * kv * hd, 2)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let v = rand_vec(n_keys * kv * hd, 3);
            let mut want = vec![0.0; rows * heads * hd];
            scalar::attention(&q, &k, &v, shape, pos0, &mut want);
            let gq = upload(be, rows, heads * hd, &q);
            let gk = upload(be, n_keys, kv * hd, &k);
            let gv = upload(be, n_keys, kv * hd, &v);
            let mut out = be.tensor(rows, heads * hd);
            be.attention(&gq, &gk, &gv, shape, pos0, &mut out);
            assert_close(
                &format!(
                    "{name} attention rows={rows} pos0={pos0} {heads}/{kv}×{hd} causal={causal} window={window:?}"
                ),
                &be.read(&out),
                &want,
                2e-6,
                1e-5,
            );
        }
    }
}

#[test]
fn activations_match_the_scalar_formulas() {
    // Values across every branch of erf (|x| < 2^-28, < 0.84375, < 1.25, < 1/0.35, < 6,
    // ≥ 6) and the saturating ranges of the others.
    let mut x: Vec<f32> = vec![
        0.0, 1e-9, -1e-9, 0.5, -0.84, 0.85, 1.2, -1.3, 2.0, 2.9, -3.5, 5.9, 6.1, -7.0, 12.0, -12.0,
        30.0, -90.0, 100.0, 3.0, -3.0,
    ];
    x.extend(rand_vec(1000, 21).iter().map(|v| v * 8.0));
    let up = rand_vec(x.len(), 22);
    let acts = [
        Activation::Silu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::QuickGelu,
        Activation::Relu,
        Activation::Hardswish,
        Activation::Hardsigmoid,
    ];
    for (name, be) in backends() {
        for act in acts {
            let mut want = x.clone();
            scalar::activate(&mut want, act);
            let mut gx = upload(be, 1, x.len(), &x);
            be.activate(&mut gx, act);
            assert_close(&format!("{name} {act:?}"), &be.read(&gx), &want, 1e-6, 2e-6);

            let mut want = vec![0.0; x.len()];
            scalar::gated(&x, &up, act, &mut want);
            let gg = upload(be, 1, x.len(), &x);
            let gu = upload(be, 1, x.len(), &up);
            let mut out = be.tensor(1, x.len());
            be.gated(&gg, &gu, act, &mut out);
            assert_close(
                &format!("{name} gated {act:?}"),
                &be.read(&out),
                &want,
                1e-6,
                2e-6,
            );
        }
    }
}

#[test]
fn small_ops_match() {
    for (name, be) in backends() {
        let (rows, cols) = (5, 67);
        let x = rand_vec(rows * cols, 1);
        let y = rand_vec(rows * cols, 2);
        let s = rand_vec(cols, 3);

        let mut want = x.clone();
        scalar::add(&mut want, &y);
        let mut gx = upload(be, rows, cols, &x);
        be.add(&mut gx, &upload(be, rows, cols, &y));
        assert_close(&format!("{name} add"), &be.read(&gx), &want, 0.0, 0.0);

        scalar::mul_channels(&mut want, &s);
        be.mul_channels(&mut gx, &upload(be, 1, cols, &s));
        assert_close(
            &format!("{name} mul_channels"),
            &be.read(&gx),
            &want,
            0.0,
            0.0,
        );

        let mut mean = vec![0.0; cols];
        scalar::mean_rows(&want, cols, &mut mean);
        let mut gm = be.tensor(1, cols);
        be.mean_rows(&gx, &mut gm);
        assert_close(&format!("{name} mean_rows"), &be.read(&gm), &mean, 0.0, 0.0);

        let logits: Vec<f32> = rand_vec(3 * 1000, 4).iter().map(|v| v * 20.0).collect();
        let mut want = logits.clone();
        for row in want.chunks_exact_mut(1000) {
            scalar::softmax(row);
        }
        let mut gl = upload(be, 3, 1000, &logits);
        be.softmax(&mut gl);
        assert_close(&format!("{name} softmax"), &be.read(&gl), &want, 1e-7, 1e-5);
    }
}

#[test]
fn argmax_takes_the_first_maximum_and_ignores_nan() {
    for (name, be) in backends() {
        let mut rows = vec![rand_vec(151_937, 9), rand_vec(7, 10), vec![0.5; 300]];
        rows[1][5] = 7.0;
        rows[1][2] = 7.0;
        rows[2][0] = f32::NAN;
        rows[2][299] = 0.75;
        rows[2][100] = 0.75;
        for row in rows {
            let want = scalar::argmax(&row);
            let g = upload(be, 1, row.len(), &row);
            assert_eq!(be.argmax(&g), vec![want], "{name} cols={}", row.len());
        }
        let all_nan = vec![f32::NAN, f32::NEG_INFINITY, f32::NAN];
        assert_eq!(scalar::argmax(&all_nan), 0);
        assert_eq!(be.argmax(&upload(be, 1, 3, &all_nan)), vec![0], "{name}");
        let two = rand_vec(2 * 999, 12);
        let want: Vec<u32> = two.chunks(999).map(scalar::argmax).collect();
        assert_eq!(be.argmax(&upload(be, 2, 999, &two)), want, "{name}");
    }
}

#[test]
fn depthwise_conv_and_pooling_match() {
    for (name, be) in backends() {
        for &(h, w, c, stride, with_bias) in &[
            (5, 7, 3, 1, true),
            (5, 7, 3, 2, false),
            (24, 24, 16, 2, false),
            (1, 1, 2, 1, true),
        ] {
            let grid = Grid { h, w };
            let x = rand_vec(h * w * c, 1);
            let wt = rand_vec(c * 9, 2);
            let b = rand_vec(c, 3);
            let (oh, ow) = (
                scalar::conv3x3_out(h, stride),
                scalar::conv3x3_out(w, stride),
            );
            let mut want = vec![0.0; oh * ow * c];
            scalar::depthwise_conv3x3(
                &x,
                grid,
                &wt,
                with_bias.then_some(&b[..]),
                stride,
                &mut want,
            );
            let gw = be.weight(HostTensor::from_f32(vec![c, 9], &wt)).unwrap();
            let gb = be.weight(HostTensor::from_f32(vec![c], &b)).unwrap();
            let mut out = be.tensor(oh * ow, c);
            be.depthwise_conv3x3(
                &upload(be, h * w, c, &x),
                grid,
                &gw,
                with_bias.then_some(&gb),
                stride,
                &mut out,
            );
            assert_close(
                &format!("{name} dwconv {h}×{w}×{c}/{stride}"),
                &be.read(&out),
                &want,
                1e-6,
                1e-6,
            );
        }
        for &(h, w, oh, ow, c) in &[(24, 24, 12, 12, 8), (7, 7, 3, 3, 5), (5, 9, 2, 4, 3)] {
            let x = rand_vec(h * w * c, 4);
            let mut want = vec![0.0; oh * ow * c];
            scalar::adaptive_avg_pool(&x, c, Grid { h, w }, Grid { h: oh, w: ow }, &mut want);
            let mut out = be.tensor(oh * ow, c);
            be.adaptive_avg_pool(
                &upload(be, h * w, c, &x),
                Grid { h, w },
                Grid { h: oh, w: ow },
                &mut out,
            );
            assert_close(
                &format!("{name} pool {h}×{w}→{oh}×{ow}"),
                &be.read(&out),
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn rows_copy_and_the_kv_cache_grows_in_place() {
    for (name, be) in backends() {
        let cols = 24;
        let mut cache = be.tensor(0, cols);
        let mut all = vec![];
        // Grow one row at a time past several reallocations, as decoding does.
        for pos in 0..70 {
            let row = rand_vec(cols, pos as u64);
            be.reserve_rows(&mut cache, pos + 1);
            be.store_kv(&upload(be, 1, cols, &row), &mut cache, pos);
            all.extend(row);
        }
        assert_eq!(be.rows(&cache), 70);
        assert_close(&format!("{name} kv"), &be.read(&cache), &all, 0.0, 0.0);

        let mut dst = be.tensor(5, cols);
        be.copy_rows(&cache, 60, 3, &mut dst, 1);
        let got = be.read(&dst);
        assert_close(
            &format!("{name} copy_rows"),
            &got[cols..4 * cols],
            &all[60 * cols..63 * cols],
            0.0,
            0.0,
        );
        assert!(
            got[..cols]
                .iter()
                .chain(&got[4 * cols..])
                .all(|&v| v == 0.0)
        );
    }
}

#[test]
fn recorded_ops_are_submitted_once_per_readback() {
    // A backend of its own: the shared ones submit for the tests running beside this one.
    let Some(be) = backends()
        .first()
        .map(|_| GpuBackend::new(&GpuOptions::default()).unwrap())
    else {
        return;
    };
    {
        let be = &be;
        let name = "default";
        let x = upload(be, 1, 64, &rand_vec(64, 1));
        let w = be
            .weight(host(DType::Q4_0, vec![100, 64], &rand_vec(6400, 2)))
            .unwrap();
        let norm = be
            .weight(HostTensor::from_f32(vec![64], &[1.0; 64]))
            .unwrap();
        let mut normed = be.tensor(1, 64);
        let mut out = be.tensor(1, 100);
        be.flush();
        let before = be.stats();
        for _ in 0..10 {
            be.rms_norm(&x, &norm, 1e-6, &mut normed);
            be.matmul(&normed, &w, None, &mut out);
            be.activate(&mut out, Activation::Silu);
        }
        let id = be.argmax(&out);
        let after = be.stats();
        assert_eq!(after.submits - before.submits, 1, "{name}");
        assert_eq!(after.dispatches - before.dispatches, 31, "{name}");
        assert_eq!(after.read_bytes - before.read_bytes, 4, "{name}");
        assert!(id[0] < 100);
    }
}

/// Relative kernel timings (not a test): `cargo test --release -p pocketvlm-engine
/// bench_kernels -- --ignored --nocapture`. Each GPU figure is the mean of 20 ops recorded
/// into one submission (read back through a 1-value probe), so per-submission overhead is
/// amortised.
#[test]
#[ignore]
fn bench_kernels() {
    use crate::backend::cpu::{CpuBackend, CpuTensor};
    use std::time::Instant;

    // The best of three rounds: the machine running this may be shared.
    fn time<T>(reps: usize, mut op: impl FnMut(), sync: impl Fn() -> T) -> f64 {
        op();
        sync();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    op();
                }
                sync();
                t.elapsed().as_secs_f64() * 1e3 / reps as f64
            })
            .fold(f64::INFINITY, f64::min)
    }

    let cpu = CpuBackend::new(None).unwrap();
    let (k, n) = (2048, 5632);
    for dtype in [DType::Q4_0, DType::Q8_0, DType::F16] {
        let w = host(dtype, vec![n, k], &rand_vec(n * k, 1));
        for t in [1, 128] {
            let x = rand_vec(t * k, 2);
            let cw = cpu.weight(w.clone()).unwrap();
            let mut cx: CpuTensor = cpu.tensor(t, k);
            cpu.write(&mut cx, &x);
            let mut co = cpu.tensor(t, n);
            let ms = time(5, || cpu.matmul(&cx, &cw, None, &mut co), || ());
            eprintln!("matmul {dtype} {t}×{n}×{k}: cpu {ms:.2} ms");
            for (name, be) in backends().iter().take(2) {
                let gw = be.weight(w.clone()).unwrap();
                let gx = upload(be, t, k, &x);
                let mut go = be.tensor(t, n);
                let probe = be.tensor(1, 1);
                let ms = time(
                    20,
                    || be.matmul(&gx, &gw, None, &mut go),
                    || be.read(&probe),
                );
                eprintln!("matmul {dtype} {t}×{n}×{k}: {name} {ms:.2} ms");
            }
        }
    }
    let (heads, hd, keys) = (32, 64, 1024);
    let shape = AttentionShape {
        n_heads: heads,
        n_kv_heads: heads,
        head_dim: hd,
        scale: 0.125,
        causal: true,
        window: None,
    };
    for rows in [1, 128] {
        let q = rand_vec(rows * heads * hd, 1);
        let kv = rand_vec(keys * heads * hd, 2);
        let pos0 = keys - rows;
        let mut cq: CpuTensor = cpu.tensor(rows, heads * hd);
        cpu.write(&mut cq, &q);
        let mut ck = cpu.tensor(keys, heads * hd);
        cpu.write(&mut ck, &kv);
        let mut co = cpu.tensor(rows, heads * hd);
        let ms = time(
            5,
            || cpu.attention(&cq, &ck, &ck, shape, pos0, &mut co),
            || (),
        );
        eprintln!("attention {rows} rows × {keys} keys: cpu {ms:.2} ms");
        for (name, be) in backends().iter().take(2) {
            let gq = upload(be, rows, heads * hd, &q);
            let gk = upload(be, keys, heads * hd, &kv);
            let mut go = be.tensor(rows, heads * hd);
            let probe = be.tensor(1, 1);
            let ms = time(
                20,
                || be.attention(&gq, &gk, &gk, shape, pos0, &mut go),
                || be.read(&probe),
            );
            eprintln!("attention {rows} rows × {keys} keys: {name} {ms:.2} ms");
        }
    }
}
