//! `pocketvlm bench --scenario`: latency scenarios of a chat with images, run through the
//! same `Session` calls the app makes, each turn's stage timeline printed.
//! - `pre-encode`: time to first token of a turn whose image arrives with the request
//!   (cold), against one whose image was attached — and so encoded — while the user typed.
//! - `follow-up`: a first turn with an image, then a follow-up question in the same
//!   conversation: with prefix reuse only the new tokens are prefilled; without it the whole
//!   conversation is (the image comes from the cache either way).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::ValueEnum;
use pocketvlm_engine::{Message, SamplingParams, Session, TurnMetrics};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    PreEncode,
    FollowUp,
    All,
}

/// One measured turn.
struct Turn {
    name: &'static str,
    metrics: TurnMetrics,
    answer: String,
}

/// Runs `scenario` on a loaded vision model; prints a report (or JSON).
pub fn run(
    session: &mut Session,
    scenario: Scenario,
    gen_tokens: usize,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        session.is_vision_model(),
        "the latency scenarios need a vision model"
    );
    let dir = std::env::temp_dir().join(format!("pocketvlm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(session, scenario, gen_tokens, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let turns = result?;
    if json {
        let rows: Vec<_> = turns
            .iter()
            .map(|t| serde_json::json!({"turn": t.name, "metrics": t.metrics}))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for t in &turns {
            print_turn(t);
        }
    }
    Ok(())
}

fn run_in(
    session: &mut Session,
    scenario: Scenario,
    gen_tokens: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Turn>> {
    let params = SamplingParams {
        max_tokens: gen_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    // Distinct images, so that no turn finds another's encoding in the image cache.
    let image = |seed: u32| -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("scene-{seed}.bmp"));
        std::fs::write(&path, test_pattern_bmp(640, 480, seed))?;
        Ok(path)
    };
    let question = "Describe the image in detail.";
    let mut turns = vec![];
    if matches!(scenario, Scenario::PreEncode | Scenario::All) {
        // Each turn a new conversation; reuse off so that neither keeps the other's prompt.
        session.set_prefix_reuse(false);
        let cold = vec![Message::user(question).with_image(image(1)?)];
        turns.push(turn(
            session,
            "cold (image sent with the prompt)",
            &cold,
            &params,
        )?);
        let typed = image(2)?;
        // The user attaches the image, then types for longer than the encoding takes.
        let prepared = session.prepare_image(&typed)?;
        session.wait_image(&prepared.hash)?;
        let warm = vec![Message::user(question).with_image(typed)];
        turns.push(turn(
            session,
            "pre-encoded (attached while typing)",
            &warm,
            &params,
        )?);
        session.set_prefix_reuse(true);
    }
    if matches!(scenario, Scenario::FollowUp | Scenario::All) {
        let first = vec![Message::user(question).with_image(image(3)?)];
        let t1 = turn(session, "first turn", &first, &params)?;
        let mut follow = first;
        follow.push(Message::assistant(t1.answer.clone()));
        follow.push(Message::user("What colour is the largest shape?"));
        turns.push(t1);
        turns.push(turn(session, "follow-up (prefix reuse)", &follow, &params)?);
        // The same follow-up with the cache thrown away: the whole conversation prefilled.
        session.set_prefix_reuse(false);
        turns.push(turn(session, "follow-up (no reuse)", &follow, &params)?);
        session.set_prefix_reuse(true);
    }
    Ok(turns)
}

fn turn(
    session: &mut Session,
    name: &'static str,
    messages: &[Message],
    params: &SamplingParams,
) -> anyhow::Result<Turn> {
    let start = Instant::now();
    let prompt = session.prompt(messages, false)?;
    let (g, answer) = session.chat_from(start, &prompt, params, &|| false, &mut |_, _| {})?;
    Ok(Turn {
        name,
        metrics: g.metrics,
        answer,
    })
}

fn print_turn(t: &Turn) {
    let m = &t.metrics;
    println!("{}", t.name);
    println!(
        "  TTFT {:.0} ms · prompt {} tokens ({} reused, {} prefilled) · vision {:.0} ms · projector {:.1} ms · decode {:.1} tok/s",
        m.ttft_ms,
        m.prompt_tokens,
        m.reused_tokens,
        m.prefill_tokens,
        m.vision_encode_ms,
        m.projector_ms,
        m.generated_tokens as f64 / (m.decode_ms / 1e3).max(1e-9)
    );
    for s in &m.timeline {
        println!(
            "  {:<17} {:>9.1} → {:>9.1} ms  {}",
            s.stage.name(),
            s.start_ms,
            s.end_ms,
            s.label
        );
    }
}

/// A 24-bit BMP of a gradient with a few rectangles placed by `seed` (distinct bytes per
/// seed, so distinct content hashes).
fn test_pattern_bmp(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let row = (width * 3).div_ceil(4) * 4;
    let size = 54 + row * height;
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(b"BM");
    for v in [size, 0, 54, 40] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(width as i32).to_le_bytes());
    out.extend_from_slice(&(height as i32).to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    for v in [0u32, row * height, 2835, 2835, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let rect = |i: u32| {
        let h = seed.wrapping_mul(2654435761).wrapping_add(i * 40503);
        let (x, y) = (h % width, (h >> 8) % height);
        (x, y, x + 40 + (h >> 16) % 160, y + 40 + (h >> 20) % 120)
    };
    let rects: Vec<_> = (0..4).map(rect).collect();
    for y in (0..height).rev() {
        let start = out.len();
        for x in 0..width {
            let inside = rects
                .iter()
                .position(|&(x0, y0, x1, y1)| x >= x0 && x < x1 && y >= y0 && y < y1);
            let bgr = match inside {
                Some(i) => [(60 * i) as u8, (255 - 50 * i) as u8, (seed * 70) as u8],
                None => [(x * 255 / width) as u8, (y * 255 / height) as u8, 128],
            };
            out.extend_from_slice(&bgr);
        }
        out.resize(start + row as usize, 0);
    }
    out
}
