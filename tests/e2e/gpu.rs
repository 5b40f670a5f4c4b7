//! The GPU backend end to end: every family fixture run on the GPU against the CPU path
//! (vision features, projector output, logits within 1e-3 relative, greedy continuations
//! identical), quantised weights, backend selection, and the one-submission decode step.
//!
//! Needs a GPU adapter (Mesa's lavapipe in CI, installed by tests/run.sh); without one the
//! tests skip with a message, and fail under POCKETVLM_STRICT=1.

use std::sync::OnceLock;

use pocketvlm_engine::backend::Backend;
use pocketvlm_engine::backend::cpu::CpuBackend;
use pocketvlm_engine::backend::gpu::{GpuBackend, GpuOptions};
use pocketvlm_engine::generate::{self, SamplingParams};
use pocketvlm_engine::load::safetensors::Checkpoint;
use pocketvlm_engine::load::spec::read_model_spec;
use pocketvlm_engine::model::spec::{ImagePlaceholder, ModelSpec};
use pocketvlm_engine::model::vlm::{QuantPolicy, Vlm};
use pocketvlm_engine::model::{ImageId, Logits, Model, Segment};
use pocketvlm_engine::tensor::DType;
use pocketvlm_engine::{BackendKind, Error, LoadOptions, Session};
use pocketvlm_tests::{Reference, fixture, max_abs_diff, require};

const TEXT: [&str; 3] = ["llama_mha", "llama_gqa", "llama_scaled"];
const VISION: [&str; 5] = [
    "mobilevlm_v1",
    "mobilevlm_v2",
    "imp_v1",
    "imp_qwen",
    "imp_phi3",
];

/// Relative tolerance of GPU results against the CPU path (× the largest CPU magnitude).
const REL: f32 = 1e-3;

/// Whether a GPU adapter exists (checked once); `require` skips or fails without one.
fn gpu_available() -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let available = AVAILABLE.get_or_init(|| {
        GpuBackend::new(&GpuOptions::default())
            .map(|be| eprintln!("GPU: {}", be.name()))
            .map_err(|e| e.to_string())
    });
    if let Err(e) = available {
        eprintln!("{e}");
    }
    require(
        available.is_ok(),
        "a GPU adapter (Mesa lavapipe: mesa-vulkan-drivers)",
    )
}

fn load<B: Backend>(be: B, name: &str, quant: Option<DType>) -> (Vlm<B>, ModelSpec) {
    let dir = fixture(name);
    let spec = read_model_spec(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ckpt = Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let quant = QuantPolicy {
        llm: quant,
        vision: quant,
    };
    let context = spec.llm.max_position_embeddings;
    let model =
        Vlm::load(be, &spec, &ckpt, quant, context).unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, spec)
}

/// The CPU with exact (f32) prefill and an f32 KV cache, the GPU's own arithmetic: the
/// default bf16 prefill of quantised weights and f16 cache would differ by their rounding,
/// not by a GPU error.
fn cpu() -> CpuBackend {
    use pocketvlm_engine::backend::cpu::KvPrecision;
    use pocketvlm_engine::backend::cpu::matmul::ActPrecision;
    use pocketvlm_engine::backend::cpu::simd::Isa;
    CpuBackend::with_options(
        Some(2),
        Isa::detect(),
        ActPrecision::Int16,
        KvPrecision::F32,
    )
    .unwrap()
}

fn gpu() -> GpuBackend {
    GpuBackend::new(&GpuOptions::default()).unwrap()
}

#[track_caller]
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32]) {
    let (diff, scale) = max_abs_diff(gpu, cpu);
    eprintln!(
        "{what}: GPU vs CPU max|Δ| = {diff:.3e}, max|cpu| = {scale:.3} (rel {:.2e})",
        diff / scale.max(f32::MIN_POSITIVE)
    );
    assert!(
        diff <= REL * scale,
        "{what}: max|Δ| {diff} > {REL} × {scale}"
    );
}

fn greedy(model: &mut dyn Model, prompt: &[Segment], n: usize) -> Vec<u32> {
    let params = SamplingParams {
        max_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    generate::generate(model, prompt, &params, &[], &|| false, &mut |_| Ok(()))
        .unwrap()
        .tokens
}

#[test]
fn text_fixtures_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    for name in TEXT {
        let reference = Reference::open(&fixture(name));
        let ids = reference.ids("input_ids");
        let (mut c, _) = load(cpu(), name, None);
        let (mut g, _) = load(gpu(), name, None);
        let prompt = [Segment::Tokens(&ids)];
        let want = c.forward(&prompt, 0, Logits::All).unwrap();
        let got = g.forward(&prompt, 0, Logits::All).unwrap();
        assert_close(&format!("{name} logits"), &got, &want);

        let expected = reference.ids("generated_ids");
        let on_cpu = greedy(&mut c, &prompt, expected.len());
        let on_gpu = greedy(&mut g, &prompt, expected.len());
        assert_eq!(on_gpu, on_cpu, "{name}: greedy GPU vs CPU");
        assert_eq!(on_gpu, expected, "{name}: greedy GPU vs transformers");
    }
}

#[test]
fn kv_cache_decode_steps_match_a_full_forward() {
    if !gpu_available() {
        return;
    }
    for name in TEXT {
        let reference = Reference::open(&fixture(name));
        let ids = reference.ids("input_ids");
        let (mut c, _) = load(cpu(), name, None);
        let (mut g, _) = load(gpu(), name, None);
        let all = c.forward(&[Segment::Tokens(&ids)], 0, Logits::All).unwrap();
        let vocab = all.len() / ids.len();
        let split = ids.len() / 3;
        let mut last = g
            .forward(&[Segment::Tokens(&ids[..split])], 0, Logits::Last)
            .unwrap();
        for pos in split..ids.len() {
            assert_close(
                &format!("{name} decode position {}", pos - 1),
                &last,
                &all[(pos - 1) * vocab..pos * vocab],
            );
            last = g
                .forward(&[Segment::Tokens(&ids[pos..pos + 1])], pos, Logits::Last)
                .unwrap();
        }
    }
}

/// The reference ids as segments, each image placeholder replaced by the next image.
fn segments<'a>(
    spec: &ModelSpec,
    ids: &[i64],
    rows: usize,
    runs: &'a mut Vec<Vec<u32>>,
    images: &[ImageId],
) -> Vec<Segment<'a>> {
    let image_id = match spec.vision.as_ref().unwrap().placeholder {
        ImagePlaceholder::VocabId(id) => i64::from(id),
        ImagePlaceholder::Sentinel => -200,
    };
    runs.clear();
    runs.push(vec![]);
    for &id in ids {
        if id == image_id {
            runs.push(vec![]);
        } else {
            runs.last_mut().unwrap().push(id as u32);
        }
    }
    let mut out = vec![];
    for (i, run) in runs.iter().enumerate() {
        if i > 0 {
            out.push(Segment::Image {
                id: images[i - 1],
                rows: 0..rows,
            });
        }
        if !run.is_empty() {
            out.push(Segment::Tokens(run));
        }
    }
    out
}

/// Vision features, projector rows, logits with the images spliced in and the greedy
/// continuation of one fixture prompt (`prefix` "" or "multi."), GPU against CPU.
fn check_vision_family(name: &str, quant: Option<DType>, check_greedy: bool) {
    check_vision_family_on(&GpuOptions::default(), name, quant, check_greedy);
}

fn check_vision_family_on(
    gpu_opts: &GpuOptions,
    name: &str,
    quant: Option<DType>,
    check_greedy: bool,
) {
    let reference = Reference::open(&fixture(name));
    let (mut c, spec) = load(cpu(), name, quant);
    let (mut g, _) = load(GpuBackend::new(gpu_opts).unwrap(), name, quant);
    let tag = quant.map_or(String::new(), |q| format!(" {q}"));
    for prefix in ["", "multi."] {
        if !reference.has(&format!("{prefix}input_ids")) {
            continue;
        }
        let n_images = if prefix.is_empty() { 1 } else { 2 };
        let mut ids_c = vec![];
        let mut ids_g = vec![];
        for i in 0..n_images {
            let (_, pixels) = reference.f32(&format!("pixel_values.{i}"));
            let fc = c.vision_features(&pixels).unwrap();
            let fg = g.vision_features(&pixels).unwrap();
            assert_close(&format!("{name}{tag} image {i} vision features"), &fg, &fc);
            let ic = c.encode_image(&pixels).unwrap();
            let ig = g.encode_image(&pixels).unwrap();
            assert_close(
                &format!("{name}{tag} image {i} projector"),
                &g.image_embeddings(ig).unwrap(),
                &c.image_embeddings(ic).unwrap(),
            );
            ids_c.push(ic);
            ids_g.push(ig);
        }
        let ids = reference.i64(&format!("{prefix}input_ids"));
        let rows = c.image_tokens().unwrap();
        let (mut runs_c, mut runs_g) = (vec![], vec![]);
        let seg_c = segments(&spec, &ids, rows, &mut runs_c, &ids_c);
        let seg_g = segments(&spec, &ids, rows, &mut runs_g, &ids_g);
        let want = c.forward(&seg_c, 0, Logits::All).unwrap();
        let got = g.forward(&seg_g, 0, Logits::All).unwrap();
        assert_close(&format!("{name}{tag} {prefix}logits"), &got, &want);
        if check_greedy {
            let expected = reference.ids(&format!("{prefix}generated_ids"));
            let on_cpu = greedy(&mut c, &seg_c, expected.len());
            let on_gpu = greedy(&mut g, &seg_g, expected.len());
            assert_eq!(on_gpu, on_cpu, "{name}{tag} {prefix}greedy GPU vs CPU");
        }
    }
}

#[test]
fn vision_families_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    for name in VISION {
        check_vision_family(name, None, true);
    }
}

/// The portable path (no subgroups, no f16) on a device opened with wgpu's
/// `downlevel_defaults()` limits: every vision family still matches the CPU.
#[test]
fn vision_families_run_under_downlevel_limits() {
    if !gpu_available() {
        return;
    }
    for name in VISION {
        check_vision_family_on(&GpuOptions::plain(), name, None, true);
    }
}

#[test]
fn quantised_weights_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    for quant in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::F16] {
        let name = "llama_gqa";
        let ids = Reference::open(&fixture(name)).ids("input_ids");
        let (mut c, _) = load(cpu(), name, Some(quant));
        let (mut g, _) = load(gpu(), name, Some(quant));
        let prompt = [Segment::Tokens(&ids)];
        assert_close(
            &format!("{name} {quant} logits"),
            &g.forward(&prompt, 0, Logits::All).unwrap(),
            &c.forward(&prompt, 0, Logits::All).unwrap(),
        );
        check_vision_family("imp_qwen", Some(quant), false);
    }
}

#[test]
fn a_greedy_decode_step_is_one_submission_reading_back_one_id() {
    if !gpu_available() {
        return;
    }
    let be = gpu();
    let (mut g, _) = load(be.clone(), "llama_gqa", Some(DType::Q4_0));
    g.forward_argmax(&[Segment::Tokens(&[1, 2, 3])], 0).unwrap();
    let before = be.stats();
    let id = g.forward_argmax(&[Segment::Tokens(&[4])], 3).unwrap();
    let after = be.stats();
    assert!((id as usize) < g.llm_config().vocab_size);
    assert_eq!(
        after.submits - before.submits,
        1,
        "submissions per decode step"
    );
    assert_eq!(
        after.read_bytes - before.read_bytes,
        4,
        "bytes read per decode step"
    );
    eprintln!(
        "llama_gqa q4_0 decode step: {} dispatches, 1 submission, 4 bytes read back",
        after.dispatches - before.dispatches
    );
}

#[test]
fn sessions_select_the_gpu_and_auto_measures_both() {
    if !gpu_available() {
        return;
    }
    let reference = Reference::open(&fixture("llama_mha"));
    let ids = reference.ids("input_ids");
    let opts = |backend| LoadOptions {
        backend,
        ..Default::default()
    };
    let mut gpu = Session::load(&fixture("llama_mha"), &opts(BackendKind::Gpu)).unwrap();
    assert!(
        gpu.info().backend.starts_with("gpu: "),
        "{}",
        gpu.info().backend
    );
    let mut cpu = Session::load(&fixture("llama_mha"), &opts(BackendKind::Cpu)).unwrap();
    assert_close(
        "session logits",
        &gpu.logits(&ids).unwrap(),
        &cpu.logits(&ids).unwrap(),
    );

    let auto = Session::load(&fixture("llama_mha"), &opts(BackendKind::Auto)).unwrap();
    let choice = auto.info().auto_choice.clone().unwrap_or_default();
    eprintln!("auto: {} ({choice})", auto.info().backend);
    assert!(choice.contains("auto: decode step"), "{choice}");
    assert!(
        choice.contains(" ms on gpu: ") && choice.contains(" ms on cpu"),
        "{choice}"
    );
}

#[test]
fn a_missing_adapter_is_an_error_for_gpu_and_the_cpu_for_auto() {
    // Hiding every Vulkan driver and GL leaves wgpu without adapters. The variables are
    // read when an instance is created, so this runs in a child process of its own.
    if std::env::var("POCKETVLM_GPU_TEST_CHILD").is_ok() {
        let err = Session::load(
            &fixture("llama_mha"),
            &LoadOptions {
                backend: BackendKind::Gpu,
                ..Default::default()
            },
        )
        .err()
        .expect("no adapter: loading on the GPU must fail");
        assert!(matches!(err, Error::GpuUnavailable(_)), "{err}");
        let vision_err = Session::load(
            &fixture("mobilevlm_v2"),
            &LoadOptions {
                vision_backend: Some(BackendKind::Gpu),
                ..Default::default()
            },
        )
        .err()
        .expect("no adapter: a vision tower on the GPU must fail");
        assert!(
            matches!(vision_err, Error::GpuUnavailable(_)),
            "{vision_err}"
        );
        let auto = Session::load(
            &fixture("llama_mha"),
            &LoadOptions {
                backend: BackendKind::Auto,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            auto.info().backend.starts_with("cpu"),
            "{}",
            auto.info().backend
        );
        println!("CHILD OK: {err}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "gpu::a_missing_adapter_is_an_error_for_gpu_and_the_cpu_for_auto",
            "--exact",
            "--nocapture",
        ])
        .env("POCKETVLM_GPU_TEST_CHILD", "1")
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("CHILD OK"),
        "child failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn load_split<B: Backend, V: Backend>(be: B, vision_be: V, name: &str) -> Vlm<B> {
    let dir = fixture(name);
    let spec = read_model_spec(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ckpt = Checkpoint::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let context = spec.llm.max_position_embeddings;
    Vlm::load_split(be, vision_be, &spec, &ckpt, QuantPolicy::default(), context)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// CPU and GPU together: the vision tower on one backend (on its own thread) and the
/// language model on the other give the single-backend CPU results — projector rows,
/// logits of a prompt with the image spliced in, the greedy continuation.
#[test]
fn a_vision_tower_on_the_other_backend_matches_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    for name in ["mobilevlm_v2", "imp_qwen"] {
        let reference = Reference::open(&fixture(name));
        let (mut c, spec) = load(cpu(), name, None);
        let (_, pixels) = reference.f32("pixel_values.0");
        let ic = c.encode_image(&pixels).unwrap();
        let rows = c.image_tokens().unwrap();
        let ids = reference.i64("input_ids");
        let mut runs = vec![];
        let seg = segments(&spec, &ids, rows, &mut runs, &[ic]);
        let want_rows = c.image_embeddings(ic).unwrap();
        let want = c.forward(&seg, 0, Logits::All).unwrap();
        let want_greedy = greedy(&mut c, &seg, 8);
        let mut split: [(&str, Box<dyn Model>); 2] = [
            (
                "LLM on CPU, vision on GPU",
                Box::new(load_split(cpu(), gpu(), name)),
            ),
            (
                "LLM on GPU, vision on CPU",
                Box::new(load_split(gpu(), cpu(), name)),
            ),
        ];
        for (what, m) in &mut split {
            assert!(m.vision_backend_name().is_some(), "{what}");
            let id = m.encode_image(&pixels).unwrap();
            assert_close(
                &format!("{name} {what}: projector"),
                &m.image_embeddings(id).unwrap(),
                &want_rows,
            );
            let mut runs = vec![];
            let seg = segments(&spec, &ids, rows, &mut runs, &[id]);
            let got = m.forward(&seg, 0, Logits::All).unwrap();
            assert_close(&format!("{name} {what}: logits"), &got, &want);
            assert_eq!(greedy(m.as_mut(), &seg, 8), want_greedy, "{name} {what}");
        }
    }
}

/// Pipelined across backends: bluelm-v's tiles encode on the GPU's vision thread while
/// the CPU prefills; the first chunk's rows are used as soon as their batch arrives, and
/// the result is the reference's.
#[test]
fn bluelm_tiles_encode_on_the_gpu_while_the_cpu_prefills() {
    if !gpu_available() {
        return;
    }
    let reference = Reference::open(&fixture("bluelm_tiny"));
    let spec = read_model_spec(&fixture("bluelm_tiny")).unwrap();
    let mut m = load_split(cpu(), gpu(), "bluelm_tiny");
    let (shape, pixels) = reference.f32("pixel_values.1");
    let per = pixels.len() / shape[0];
    let passes = pixels.chunks(per).map(<[f32]>::to_vec).collect();
    let id = m.begin_image(passes).unwrap();
    let ids = reference.i64("input_ids");
    let rows = m.image_rows(id).unwrap();
    let mut runs = vec![];
    let seg = segments(&spec, &ids, rows, &mut runs, &[id]);
    let logits = m.forward(&seg, 0, Logits::All).unwrap();
    let (tail_shape, tail) = reference.f32("logits_tail");
    let vocab = spec.llm.vocab_size;
    assert_close(
        "bluelm split logits (reference)",
        &logits[logits.len() - tail_shape[0] * vocab..],
        &tail,
    );
    // The vision thread delivered the image batch by batch (two tiles at a time).
    let spans = m.take_encode_spans();
    assert!(spans.len() >= 2, "{} batches", spans.len());
    assert!(spans.windows(2).all(|w| w[0].first < w[1].first));
    let want = reference.ids("generated_ids");
    assert_eq!(greedy(&mut m, &seg, want.len()), want);
}

/// A session with `vision_backend` set reports it and answers as the CPU does.
#[test]
fn sessions_put_the_vision_tower_on_the_chosen_backend() {
    if !gpu_available() {
        return;
    }
    let dir = fixture("mobilevlm_v2");
    let opts = LoadOptions {
        vision_backend: Some(BackendKind::Gpu),
        ..Default::default()
    };
    let split = Session::load(&dir, &opts).unwrap();
    let info = split.info();
    assert!(info.backend.starts_with("cpu"), "{}", info.backend);
    let vision = info.vision_backend.clone().unwrap_or_default();
    assert!(vision.starts_with("gpu: "), "{vision}");
    // Auto (or naming the language model's own backend) keeps the tower beside it.
    for same in [BackendKind::Auto, BackendKind::Cpu] {
        let opts = LoadOptions {
            vision_backend: Some(same),
            ..Default::default()
        };
        assert_eq!(
            Session::load(&dir, &opts).unwrap().info().vision_backend,
            None
        );
    }
}

/// bluelm-v on the GPU: the passes are encoded inline, a batch of two tiles at a time, when
/// the prefill first needs their rows — the batched tower, the downsampler (four column-block
/// matmuls) and the interleaved prefill against the reference.
#[test]
fn bluelm_tiles_are_encoded_inline_and_match_the_reference() {
    if !gpu_available() {
        return;
    }
    let reference = Reference::open(&fixture("bluelm_tiny"));
    let (mut g, spec) = load(gpu(), "bluelm_tiny", None);
    let (shape, pixels) = reference.f32("pixel_values.1");
    let per = pixels.len() / shape[0];
    let passes = pixels.chunks(per).map(<[f32]>::to_vec).collect();
    let id = g.begin_image(passes).unwrap();
    // Nothing is encoded before a chunk needs it.
    assert_eq!(g.image_times(id).map(|t| t.1), Some(false));
    let ids = reference.i64("input_ids");
    let rows = g.image_rows(id).unwrap();
    let mut runs = vec![];
    let seg = segments(&spec, &ids, rows, &mut runs, &[id]);
    let logits = g.forward(&seg, 0, Logits::All).unwrap();
    let (tail_shape, tail) = reference.f32("logits_tail");
    let vocab = spec.llm.vocab_size;
    assert_close(
        "bluelm logits (reference)",
        &logits[logits.len() - tail_shape[0] * vocab..],
        &tail,
    );
    let (_, expected) = reference.f32("image_features.1");
    assert_close(
        "bluelm image rows (reference)",
        &g.image_embeddings(id).unwrap(),
        &expected,
    );
    let want = reference.ids("generated_ids");
    assert_eq!(greedy(&mut g, &seg, want.len()), want);
}
