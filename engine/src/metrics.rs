//! Stage timings and sizes reported to the CLI, the GUI dashboard and benchmarks.

use serde::{Deserialize, Serialize};

/// Timings of one chat turn (one prompt → one answer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnMetrics {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Tokenising and templating the prompt.
    pub tokenize_ms: f64,
    /// Running the prompt through the model (the KV cache fill).
    pub prefill_ms: f64,
    /// From the request to the first generated token.
    pub ttft_ms: f64,
    /// Everything after the first token.
    pub decode_ms: f64,
    pub total_ms: f64,
    /// Images in the prompt.
    #[serde(default)]
    pub images: usize,
    /// Decoding the prompt's image files and preprocessing them (resize, crop, normalise).
    #[serde(default)]
    pub image_preprocess_ms: f64,
    /// The vision tower over the prompt's images.
    #[serde(default)]
    pub vision_encode_ms: f64,
    /// The projector from vision features to language-model embeddings.
    #[serde(default)]
    pub projector_ms: f64,
    /// Bytes of weights the backend holds.
    #[serde(default)]
    pub weight_bytes: usize,
    /// Bytes allocated for the KV cache.
    #[serde(default)]
    pub kv_cache_bytes: usize,
    /// Resident memory of the whole process after the turn (`None` where the platform
    /// does not tell).
    #[serde(default)]
    pub process_memory_bytes: Option<u64>,
    /// Prompt positions whose keys and values were kept from the previous turn (the common
    /// prefix with what the KV cache held); only the rest was prefilled.
    #[serde(default)]
    pub reused_tokens: usize,
    /// Prompt positions prefilled in this turn (`prompt_tokens − reused_tokens` unless
    /// cancelled).
    #[serde(default)]
    pub prefill_tokens: usize,
    /// What ran when: stage spans in milliseconds from the request (image work done ahead of
    /// it, while the user typed, has negative offsets).
    #[serde(default)]
    pub timeline: Vec<Span>,
}

/// A stage of a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    Tokenize,
    ImagePreprocess,
    VisionEncode,
    Projector,
    Prefill,
    Decode,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Tokenize,
        Stage::ImagePreprocess,
        Stage::VisionEncode,
        Stage::Projector,
        Stage::Prefill,
        Stage::Decode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Tokenize => "Tokenize",
            Stage::ImagePreprocess => "Image preprocess",
            Stage::VisionEncode => "Vision encode",
            Stage::Projector => "Projector",
            Stage::Prefill => "Prefill",
            Stage::Decode => "Decode",
        }
    }
}

/// One piece of work on the turn's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub stage: Stage,
    /// Milliseconds from the request (negative: before it).
    pub start_ms: f64,
    pub end_ms: f64,
    /// What it was ("image 1, tiles 1–4", "128 tokens").
    #[serde(default)]
    pub label: String,
    /// Positions it processed (prefill chunks) or tokens it produced (decode).
    #[serde(default)]
    pub tokens: usize,
}

impl Span {
    pub fn ms(&self) -> f64 {
        self.end_ms - self.start_ms
    }
}

/// Milliseconds from `origin` to `t`, negative when `t` is earlier.
pub fn offset_ms(origin: std::time::Instant, t: std::time::Instant) -> f64 {
    if t >= origin {
        ms_between(origin, t)
    } else {
        -ms_between(t, origin)
    }
}

/// How long one image encode spent in each part of the vision path.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EncodeTimes {
    pub vision_ms: f64,
    pub projector_ms: f64,
}

impl TurnMetrics {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_ms)
    }

    /// All image work of the turn: preprocessing, vision tower, projector.
    pub fn image_ms(&self) -> f64 {
        self.image_preprocess_ms + self.vision_encode_ms + self.projector_ms
    }

    /// Tokens per second after the first token (which belongs to the prefill).
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Milliseconds from `a` to `b` (0 if `b` is earlier).
pub fn ms_between(a: std::time::Instant, b: std::time::Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}

/// Milliseconds since `t`.
pub fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Resident set size of this process, in bytes (Linux: `VmRSS` of `/proc/self/status`).
pub fn process_memory_bytes() -> Option<u64> {
    if cfg!(target_os = "linux") {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_memory_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_memory_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn metrics_from_older_files_still_read() {
        let old = r#"{"prompt_tokens":3,"generated_tokens":2,"tokenize_ms":1.0,"prefill_ms":2.0,"ttft_ms":3.0,"decode_ms":4.0,"total_ms":7.0}"#;
        let m: TurnMetrics = serde_json::from_str(old).unwrap();
        assert_eq!(m.prompt_tokens, 3);
        assert_eq!(m.images, 0);
        assert_eq!(m.process_memory_bytes, None);
    }
}
