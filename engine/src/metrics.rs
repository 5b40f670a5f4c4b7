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
}

impl TurnMetrics {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_ms)
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

/// Milliseconds since `t`.
pub fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
