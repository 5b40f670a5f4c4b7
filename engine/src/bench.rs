//! `pocketvlm bench`: load → vision → projector → prefill → decode timings of one model,
//! its memory (peak RSS against weights + KV cache + activations) and how close decoding
//! comes to the memory-bandwidth roofline, measured in the same run.
//!
//! The roofline: decoding one token reads every language-model weight once (an untied
//! embedding table only by one row), so `decode_weight_bytes × tok/s` is the bandwidth
//! decoding achieves; it is divided by the bandwidth a multi-threaded streaming read of a
//! buffer larger than the last-level cache achieves on the same threads. A shared host's
//! bandwidth drifts from second to second (one 2-core VM read 17 to 44 GB/s in passes a few
//! milliseconds apart), so the two are measured interleaved: [`ROOFLINE_ROUNDS`] short
//! decode runs, each between two read passes, and the ratio is the decode speed of those
//! runs over the median pass.

use std::time::Instant;

use serde::Serialize;

use crate::backend::Backend;
use crate::backend::cpu::{CpuBackend, ops};
use crate::error::{Error, Result};
use crate::model::llm::PREFILL_CHUNK;
use crate::model::spec::ModelSpec;
use crate::model::{Logits, Model, Segment};
use crate::tensor::{DType, HostTensor};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Text positions of the prompt (after the image, if any).
    pub prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    pub gen_tokens: usize,
    /// Normalised CHW pixels to encode before the prompt (vision models).
    pub pixels: Option<Vec<f32>>,
    /// Measure the roofline ratio: a few hundred MB streamed a few times, interleaved with
    /// short decode runs (see the module docs).
    pub measure_bandwidth: bool,
}

/// One bench run; serialised as the `--json` object.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    /// The GPU adapter's name when the model runs on the GPU backend.
    pub adapter: Option<String>,
    /// The vision tower's backend when it is not the language model's.
    pub vision_backend: Option<String>,
    pub threads: usize,
    pub isa: String,
    pub load_ms: f64,
    /// Vision tower (selected layer) on one image; 0 without an image.
    pub vision_ms: f64,
    /// Projector on the tower's output.
    pub projector_ms: f64,
    pub prompt_tokens: usize,
    /// Positions prefilled: image rows plus prompt tokens.
    pub prefill_positions: usize,
    pub prefill_tok_s: f64,
    pub gen_tokens: usize,
    pub decode_tok_s: f64,
    /// Image encoding (tower + projector) + prefill + the first token's sampling.
    pub ttft_ms: f64,
    pub peak_rss_bytes: u64,
    pub weight_bytes: usize,
    pub kv_bytes: usize,
    /// Activation buffers, estimated from the model's shapes.
    pub activation_bytes: usize,
    /// peak_rss / (weights + kv + activations).
    pub rss_ratio: f64,
    pub decode_weight_bytes: usize,
    /// Median of the streaming-read passes interleaved with the roofline's decode runs.
    pub mem_bandwidth_gb_s: f64,
    /// Decode speed of the runs interleaved with the read passes (at the context length
    /// the main decode ended at).
    pub roofline_decode_tok_s: f64,
    /// decode_weight_bytes × roofline_decode_tok_s / mem_bandwidth.
    pub roofline_ratio: f64,
}

impl BenchReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Deterministic prompt ids in `[3, vocab)` (no special tokens).
fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            3 + (s % (vocab.max(4) as u64 - 3)) as u32
        })
        .collect()
}

/// Activation memory of `spec` with `context` positions: the decoder's chunk buffers and
/// RoPE tables, the quantised-activation buffer, the logits, and the vision tower's
/// per-image buffers.
pub fn estimate_activation_bytes(spec: &ModelSpec, context: usize) -> usize {
    let c = &spec.llm;
    let (h, inter) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let chunk = PREFILL_CHUNK;
    let decoder = chunk * (5 * h + 2 * q + 2 * kv + 3 * inter + c.vocab_size) * 4;
    let rope = 2 * context * (c.rope.rotary_dim / 2) * 4;
    let quantised = chunk * inter.max(h) * 3;
    let vision = spec.vision.as_ref().map_or(0, |v| {
        let t = &v.tower;
        let n = t.num_positions();
        n * (8 * t.hidden_size + t.intermediate_size + 3 * t.patch_size * t.patch_size) * 4
            + n * h * 4 * 3
    });
    decoder + rope + quantised + vision
}

/// Peak resident set size of this process (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The largest CPU cache (bytes), from Linux sysfs; 32 MiB when unknown.
fn last_level_cache_bytes() -> usize {
    let mut best = 0usize;
    for i in 0..8 {
        let Ok(s) =
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size"))
        else {
            continue;
        };
        let s = s.trim();
        let (num, mul) = match s.strip_suffix('K') {
            Some(n) => (n, 1024),
            None => match s.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => (s, 1),
            },
        };
        if let Ok(n) = num.parse::<usize>() {
            best = best.max(n * mul);
        }
    }
    if best == 0 { 32 << 20 } else { best }
}

/// Decode runs of the roofline measurement, each between two streaming-read passes.
pub const ROOFLINE_ROUNDS: usize = 8;
/// Tokens per roofline decode run (fewer when the bench decodes fewer).
const ROOFLINE_STEPS: usize = 8;

/// A streaming read on the backend's threads over a buffer 8× the last-level cache (256 MiB
/// to 1 GiB), in 4 MiB work items, in the same kind of pages as the backend's weights (huge
/// pages where it puts them there: the read must not pay TLB misses the decode is spared).
struct BandwidthProbe<'a> {
    be: &'a CpuBackend,
    buf: crate::tensor::Storage,
}

impl<'a> BandwidthProbe<'a> {
    fn new(be: &'a CpuBackend) -> Result<Self> {
        let bytes = (8 * last_level_cache_bytes()).clamp(256 << 20, 1 << 30);
        // Contents that differ from page to page: pages that are really allocated, and
        // that no same-page merging can fold into one.
        let words: Vec<u64> = (0..bytes as u64 / 8)
            .map(|i| {
                ((2 * i) as f32).to_bits() as u64 | (((2 * i + 1) as f32).to_bits() as u64) << 32
            })
            .collect();
        let storage = crate::tensor::Storage::Owned {
            words: std::sync::Arc::new(words),
            offset: 0,
            len: bytes,
        };
        let host = HostTensor::new(DType::F32, vec![bytes / 4096, 1024], storage);
        let buf = be.weight(host)?.storage;
        Ok(BandwidthProbe { be, buf })
    }

    /// One pass over the buffer: bytes/s.
    fn pass(&self) -> f64 {
        const CHUNK: usize = 1 << 20; // values per work item
        let buf: &[f32] = bytemuck::cast_slice(self.buf.bytes());
        let isa = self.be.isa();
        let items = buf.len().div_ceil(CHUNK);
        let t = Instant::now();
        let sink = std::sync::atomic::AtomicU32::new(0);
        self.be.pool().run(|ctx| {
            let mut acc = 0.0f32;
            loop {
                let i = ctx.next();
                if i >= items {
                    break;
                }
                let part = &buf[i * CHUNK..((i + 1) * CHUNK).min(buf.len())];
                acc += ops::stream_sum(isa, part);
            }
            sink.fetch_add(acc.to_bits() & 1, std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
        (buf.len() * 4) as f64 / t.elapsed().as_secs_f64()
    }
}

/// The roofline's two speeds, measured interleaved (see the module docs): decode tok/s of
/// [`ROOFLINE_ROUNDS`] runs of up to [`ROOFLINE_STEPS`] tokens, each re-decoding the last
/// positions before `end` (their KV rows are overwritten), and the median bandwidth of the
/// read passes around them (bytes/s).
fn interleaved_roofline(
    model: &mut dyn Model,
    be: &CpuBackend,
    end: usize,
    first: u32,
    gen_tokens: usize,
) -> Result<(f64, f64)> {
    let vocab = model.llm_config().vocab_size as u32;
    let steps = ROOFLINE_STEPS
        .min(gen_tokens)
        .min(end.saturating_sub(1))
        .max(1);
    let probe = BandwidthProbe::new(be)?;
    let mut passes = vec![probe.pass()];
    let mut decode_s = 0.0;
    for _ in 0..ROOFLINE_ROUNDS {
        let t = Instant::now();
        let mut next = first;
        for pos in end - steps..end {
            let logits = model.forward(&[Segment::Tokens(&[next])], pos, Logits::Last)?;
            next = argmax(&logits).min(vocab - 1);
        }
        decode_s += t.elapsed().as_secs_f64();
        passes.push(probe.pass());
    }
    passes.sort_by(f64::total_cmp);
    let median = passes[passes.len() / 2];
    Ok(((ROOFLINE_ROUNDS * steps) as f64 / decode_s, median))
}

/// Runs the benchmark on a loaded model. `bw_backend` is a CPU backend with the model's
/// thread count, for the bandwidth measurement.
pub fn run(
    model: &mut dyn Model,
    spec: &ModelSpec,
    name: &str,
    load_ms: f64,
    cfg: &BenchConfig,
    bw_backend: &CpuBackend,
) -> Result<BenchReport> {
    let vocab = model.llm_config().vocab_size;
    let ids = prompt_ids(cfg.prompt_tokens.max(1), vocab);
    let image_rows = if cfg.pixels.is_some() {
        model.image_tokens().unwrap_or(0)
    } else {
        0
    };
    let needed = image_rows + ids.len() + cfg.gen_tokens + 1;
    if needed > model.context_len() {
        return Err(Error::ContextOverflow {
            prompt: needed,
            context: model.context_len(),
        });
    }
    let mut r = BenchReport {
        model: name.to_string(),
        backend: model.backend_name(),
        adapter: model.adapter(),
        vision_backend: model.vision_backend_name(),
        threads: bw_backend.threads(),
        isa: bw_backend.isa().name().to_string(),
        load_ms,
        prompt_tokens: ids.len(),
        gen_tokens: cfg.gen_tokens,
        weight_bytes: model.weight_bytes(),
        decode_weight_bytes: model.decode_weight_bytes(),
        ..Default::default()
    };

    // Warm-up: touches every weight page and wakes the pool.
    let warm = &ids[..ids.len().min(16)];
    let logits = model.forward(&[Segment::Tokens(warm)], 0, Logits::Last)?;
    model.forward(
        &[Segment::Tokens(&[argmax(&logits)])],
        warm.len(),
        Logits::Last,
    )?;

    let mut segments = vec![];
    let mut encode_ms = 0.0;
    if let Some(px) = &cfg.pixels {
        // The tower alone, then tower + projector, twice each (best of two): the
        // projector's time is the difference, too small to survive one noisy run.
        let (mut vision, mut encode) = (f64::MAX, f64::MAX);
        let mut id = None;
        for _ in 0..2 {
            let t = Instant::now();
            model.vision_features(px)?;
            vision = vision.min(ms(t));
            let t = Instant::now();
            let new_id = model.encode_image(px)?;
            encode = encode.min(ms(t));
            if let Some(old) = id.replace(new_id) {
                model.release_image(old);
            }
        }
        r.vision_ms = vision;
        r.projector_ms = (encode - vision).max(0.0);
        encode_ms = encode;
        if let Some(id) = id {
            segments.push(Segment::Image {
                id,
                rows: 0..image_rows,
            });
        }
    }
    segments.push(Segment::Tokens(&ids));
    let t = Instant::now();
    let logits = model.forward(&segments, 0, Logits::Last)?;
    let prefill_ms = ms(t);
    let mut next = argmax(&logits);
    r.ttft_ms = encode_ms + ms(t);
    r.prefill_positions = image_rows + ids.len();
    r.prefill_tok_s = r.prefill_positions as f64 * 1e3 / prefill_ms;

    let mut pos = r.prefill_positions;
    let t = Instant::now();
    for _ in 0..cfg.gen_tokens {
        let logits = model.forward(&[Segment::Tokens(&[next])], pos, Logits::Last)?;
        next = argmax(&logits).min(vocab as u32 - 1);
        pos += 1;
    }
    let decode_ms = ms(t);
    r.decode_tok_s = if cfg.gen_tokens > 0 {
        cfg.gen_tokens as f64 * 1e3 / decode_ms
    } else {
        0.0
    };
    r.kv_bytes = model.kv_bytes();
    r.activation_bytes = estimate_activation_bytes(spec, pos);
    r.peak_rss_bytes = peak_rss_bytes().unwrap_or(0);
    let budget = r.weight_bytes + r.kv_bytes + r.activation_bytes;
    r.rss_ratio = r.peak_rss_bytes as f64 / budget.max(1) as f64;

    if cfg.measure_bandwidth && cfg.gen_tokens > 0 {
        let (tok_s, bw) = interleaved_roofline(model, bw_backend, pos, next, cfg.gen_tokens)?;
        r.mem_bandwidth_gb_s = bw / 1e9;
        r.roofline_decode_tok_s = tok_s;
        r.roofline_ratio = r.decode_weight_bytes as f64 * tok_s / bw;
    }
    Ok(r)
}
