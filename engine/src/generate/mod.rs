//! The prefill/decode loop, stop conditions, cancellation and streaming detokenisation.

pub mod sampler;

use std::time::Instant;

use crate::error::{Error, Result};
use crate::load::tokenizer::Tokenizer;
use crate::metrics::{Span, Stage, TurnMetrics, ms_since, offset_ms};
use crate::model::llm::PREFILL_CHUNK;
use crate::model::{Logits, Model, Segment, split_segments};
pub use sampler::{Sampler, SamplingParams};

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopReason {
    /// The model produced an end-of-sequence token (not included in the output).
    Eos,
    MaxTokens,
    Cancelled,
    /// The KV cache is full.
    ContextFull,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub metrics: TurnMetrics,
    /// Positions of the KV cache that now hold valid keys and values: the prompt positions
    /// prefilled (all of them unless cancelled during prefill), then every generated token
    /// that was fed back (all but a last one the loop stopped on).
    pub kv_positions: usize,
}

/// How [`generate_with`] runs the prompt.
#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    /// Positions at the start of the prompt already in the KV cache (prefix reuse): they are
    /// not run again. At most the prompt length minus one.
    pub reuse: usize,
    /// Positions per prefill call (BlueLM-V's "t128"); a cancel is honoured between calls.
    pub prefill_chunk: usize,
    /// When the turn started (the origin of the timeline and of the time to first token);
    /// `None`: when `generate_with` is called.
    pub clock: Option<Instant>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            reuse: 0,
            prefill_chunk: PREFILL_CHUNK,
            clock: None,
        }
    }
}

/// The segments of `prompt` from position `skip` on.
pub fn skip_positions<'a>(prompt: &[Segment<'a>], skip: usize) -> Vec<Segment<'a>> {
    let mut left = skip;
    let mut out = Vec::new();
    for seg in prompt {
        let n = seg.len();
        if left >= n {
            left -= n;
            continue;
        }
        out.push(match seg {
            Segment::Tokens(t) => Segment::Tokens(&t[left..]),
            Segment::Image { id, rows } => Segment::Image {
                id: *id,
                rows: rows.start + left..rows.end,
            },
        });
        left = 0;
    }
    out
}

/// Runs `prompt` through the model from position 0 and samples up to `params.max_tokens`
/// tokens, calling `on_token` for each (EOS excluded). `cancelled` is polled between
/// prefill chunks and before every decode step, so a cancel takes effect within one step.
pub fn generate(
    model: &mut dyn Model,
    prompt: &[Segment],
    params: &SamplingParams,
    stop_ids: &[u32],
    cancelled: &dyn Fn() -> bool,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    generate_with(
        model,
        prompt,
        params,
        stop_ids,
        &GenerateOptions::default(),
        cancelled,
        on_token,
    )
}

/// [`generate`] with prefix reuse, the prefill chunk size and the turn's clock. The metrics
/// carry the timeline of the prefill chunks and the decode.
pub fn generate_with(
    model: &mut dyn Model,
    prompt: &[Segment],
    params: &SamplingParams,
    stop_ids: &[u32],
    opts: &GenerateOptions,
    cancelled: &dyn Fn() -> bool,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    params.validate().map_err(Error::InvalidArgument)?;
    let prompt_len: usize = prompt.iter().map(Segment::len).sum();
    if prompt_len == 0 {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    if opts.reuse >= prompt_len {
        return Err(Error::InvalidArgument(format!(
            "cannot reuse {} positions of a {prompt_len}-position prompt (one must run)",
            opts.reuse
        )));
    }
    let context = model.context_len();
    if prompt_len >= context {
        return Err(Error::ContextOverflow {
            prompt: prompt_len,
            context,
        });
    }
    let start = opts.clock.unwrap_or_else(Instant::now);
    let mut metrics = TurnMetrics {
        prompt_tokens: prompt_len,
        reused_tokens: opts.reuse,
        ..Default::default()
    };
    let mut sampler = Sampler::new(params.clone());
    // Text tokens seen so far, for the repetition penalty (image rows have no token id).
    let mut all: Vec<u32> = prompt
        .iter()
        .filter_map(|s| match s {
            Segment::Tokens(t) => Some(t.iter().copied()),
            Segment::Image { .. } => None,
        })
        .flatten()
        .collect();
    let mut out = Vec::new();
    let finish = |tokens, stop, mut metrics: TurnMetrics, kv_positions| {
        metrics.total_ms = ms_since(start);
        Ok(Generation {
            tokens,
            stop,
            metrics,
            kv_positions,
        })
    };

    // Greedy decoding without a penalty needs only the argmax, which the backend computes
    // where the logits are (a GPU then reads back one id, not the vocabulary).
    let argmax_only = params.temperature == 0.0 && params.repetition_penalty == 1.0;

    // Prefill, chunk by chunk so that a cancel is honoured between chunks.
    let mut last = Step::Id(0);
    let mut pos = opts.reuse;
    let suffix = skip_positions(prompt, opts.reuse);
    let mut prefill_start = None;
    for piece in split_segments(&suffix, opts.prefill_chunk.max(1)) {
        if cancelled() {
            return finish(out, StopReason::Cancelled, metrics, pos);
        }
        let t0 = Instant::now();
        prefill_start.get_or_insert(t0);
        last = Step::run(model, &piece, pos, argmax_only)?;
        let n = piece.iter().map(Segment::len).sum::<usize>();
        pos += n;
        metrics.prefill_tokens += n;
        metrics.timeline.push(Span {
            stage: Stage::Prefill,
            start_ms: offset_ms(start, t0),
            end_ms: ms_since(start),
            label: format!("positions {}–{}", pos - n, pos - 1),
            tokens: n,
        });
    }
    metrics.prefill_ms = prefill_start.map_or(0.0, ms_since);

    let decode_start = Instant::now();
    let decode_span = |metrics: &mut TurnMetrics, n: usize| {
        metrics.decode_ms = ms_since(decode_start);
        metrics.timeline.push(Span {
            stage: Stage::Decode,
            start_ms: offset_ms(start, decode_start),
            end_ms: ms_since(start),
            label: format!("{n} tokens"),
            tokens: n,
        });
    };
    loop {
        let next = match &mut last {
            Step::Id(id) => *id,
            Step::Logits(logits) => sampler.sample(logits, &all),
        };
        if out.is_empty() {
            metrics.ttft_ms = ms_since(start);
        }
        if !params.ignore_eos && stop_ids.contains(&next) {
            decode_span(&mut metrics, out.len());
            return finish(out, StopReason::Eos, metrics, pos);
        }
        out.push(next);
        all.push(next);
        metrics.generated_tokens = out.len();
        on_token(next)?;
        let stop = if out.len() >= params.max_tokens {
            Some(StopReason::MaxTokens)
        } else if pos + 1 >= context {
            Some(StopReason::ContextFull)
        } else if cancelled() {
            Some(StopReason::Cancelled)
        } else {
            None
        };
        if let Some(stop) = stop {
            decode_span(&mut metrics, out.len());
            return finish(out, stop, metrics, pos);
        }
        last = Step::run(model, &[Segment::Tokens(&[next])], pos, argmax_only)?;
        pos += 1;
    }
}

/// What one forward pass of the generation loop returns.
enum Step {
    /// The next token, chosen by the backend (greedy).
    Id(u32),
    /// The last position's logits, for the sampler.
    Logits(Vec<f32>),
}

impl Step {
    fn run(
        model: &mut dyn Model,
        input: &[Segment],
        pos: usize,
        argmax_only: bool,
    ) -> Result<Step> {
        Ok(if argmax_only {
            Step::Id(model.forward_argmax(input, pos)?)
        } else {
            Step::Logits(model.forward(input, pos, Logits::Last)?)
        })
    }
}

/// Turns a growing token sequence into text deltas. Like transformers' text streamers, the
/// whole answer is decoded at every token and only its stable part is released: an
/// incomplete UTF-8 character at the end (a byte-level token can stop mid-character) and
/// everything from the last whitespace on are held back, because later tokens may
/// complete the character or change how that whitespace decodes (SentencePiece's legacy
/// rules, clean-up of " ." and " 's"). Text without spaces (CJK) flows at once.
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: String,
}

impl TextStream {
    /// Adds a token; returns the text it makes stable, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, true)?;
        let candidate = text.trim_end_matches('\u{FFFD}');
        let Some(unreleased) = candidate.strip_prefix(self.emitted.as_str()) else {
            return Ok(None);
        };
        let stable = match unreleased.rfind(char::is_whitespace) {
            Some(i) => unreleased[..i].trim_end(),
            None => unreleased,
        };
        if stable.is_empty() {
            return Ok(None);
        }
        let delta = stable.to_string();
        self.emitted.push_str(&delta);
        Ok(Some(delta))
    }

    /// The text still held back once generation has ended.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let text = tokenizer.decode(&self.ids, true)?;
        let tail = text
            .strip_prefix(self.emitted.as_str())
            .unwrap_or_default()
            .to_string();
        self.emitted.push_str(&tail);
        Ok(tail)
    }
}
