//! The memory guard: before a model is built, estimate what it will need (weights in their
//! final formats, the KV cache for the whole context, activation buffers) and refuse with a
//! clear message and a suggestion when that exceeds the memory available, rather than
//! being killed by the out-of-memory killer halfway through a load.

use crate::error::{Error, Result};
use crate::load::source::TensorSource;
use crate::model::llm::PREFILL_CHUNK;
use crate::model::spec::ModelSpec;
use crate::quantize::planned_format;
use crate::tensor::DType;

/// What loading a model will need, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations
    }
}

/// Bytes of memory available to this process: `POCKETVLM_MEMORY_LIMIT` (bytes) if set,
/// else Linux's `MemAvailable`; `None` where neither is known (the guard then stays off).
pub fn available_bytes() -> Option<u64> {
    if let Some(limit) = std::env::var("POCKETVLM_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(limit);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Estimates a model's memory: every tensor in the format it will be stored in, the KV
/// cache at full context (`kv_value_bytes` a value), and the activation buffers of one
/// prefill chunk.
pub fn estimate(
    spec: &ModelSpec,
    src: &dyn TensorSource,
    llm: Option<DType>,
    vision: Option<DType>,
    context_len: usize,
    kv_value_bytes: usize,
) -> MemoryEstimate {
    let cfg = &spec.llm;
    let mut weights = 0u64;
    for name in src.names() {
        let Some(shape) = src.shape(&name) else {
            continue;
        };
        let numel: usize = shape.iter().product();
        // Matrices to be converted count in their target format; the rest as stored (the
        // CPU and GPU backends keep f16/bf16/quantised blocks as they are), or at 2 bytes
        // a value where the source cannot say.
        let (target, _) = planned_format(
            &name,
            &shape,
            DType::F16,
            llm,
            vision,
            cfg.tie_word_embeddings,
        );
        let stored = src.stored_bytes(&name).unwrap_or(numel as u64 * 2);
        let bytes = match target.and_then(|t| t.bytes_for(numel)) {
            Some(b) => b as u64,
            None => stored,
        };
        weights += bytes;
    }
    let kv_dim = cfg.num_kv_heads * cfg.head_dim;
    let kv_cache = (2 * cfg.num_layers * context_len * kv_dim * kv_value_bytes) as u64;
    let per_row = 8 * cfg.hidden_size + 3 * cfg.intermediate_size + cfg.vocab_size;
    let mut activations = (PREFILL_CHUNK * per_row * 4) as u64;
    if let Some(v) = &spec.vision {
        let t = &v.tower;
        let rows = t.num_positions();
        activations += (rows * (8 * t.hidden_size + t.intermediate_size) * 4) as u64;
    }
    MemoryEstimate {
        weights,
        kv_cache,
        activations,
    }
}

/// Bytes in the largest binary unit that keeps the number at least 1.
fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[unit])
    }
}

/// Refuses a load whose estimate does not fit in `available`, with a suggestion.
pub fn check(
    estimate: MemoryEstimate,
    available: u64,
    quantised: bool,
    context_len: usize,
) -> Result<()> {
    if estimate.total() <= available {
        return Ok(());
    }
    let mut advice = vec![];
    if !quantised {
        advice.push(
            "a smaller weight format (--quant q4_0 keeps about a quarter of f16)".to_string(),
        );
    }
    let rest = estimate.weights + estimate.activations;
    if estimate.kv_cache > 0 && rest < available {
        let per_position = estimate.kv_cache / context_len.max(1) as u64;
        let fits = (available - rest) / per_position.max(1);
        advice.push(format!(
            "a shorter context (--ctx {})",
            fits.min(context_len as u64)
        ));
    }
    if advice.is_empty() {
        advice.push("a smaller model".into());
    }
    Err(Error::OutOfMemory {
        needed: estimate.total(),
        available,
        detail: format!(
            "needs about {} (weights {}, KV cache {}, activations {}) but {} is available; try {}",
            human(estimate.total()),
            human(estimate.weights),
            human(estimate.kv_cache),
            human(estimate.activations),
            human(available),
            advice.join(", or ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_advice() {
        let e = MemoryEstimate {
            weights: 4 << 30,
            kv_cache: 2 << 30,
            activations: 1 << 20,
        };
        assert!(check(e, 8 << 30, false, 4096).is_ok());
        let msg = check(e, 5 << 30, false, 4096).unwrap_err().to_string();
        assert!(
            msg.contains("--quant q4_0") && msg.contains("--ctx 2046"),
            "{msg}"
        );
        assert!(msg.contains("needs about 6.00 GiB"), "{msg}");
        let msg = check(e, 3 << 30, true, 4096).unwrap_err().to_string();
        assert!(msg.contains("a smaller model"), "{msg}");
    }
}
