//! The soak run: 200 consecutive generations with images through the engine API, on a VLM
//! fixture. The process's resident memory after the last one must be within 5% of what it
//! was after the 10th (by then every buffer and cache has reached its working size): no
//! leak per turn, per image or per encoded-image cache entry. The figures are printed.
//! Its own test binary, so that no other test's allocations move the figures.

use std::time::Duration;

use pocketvlm_engine::{
    Command, Engine, Event, GenerateRequest, LoadOptions, Message, SamplingParams, StopReason,
};
use pocketvlm_tests::fixture;

const TURNS: usize = 200;
const BASELINE_TURN: usize = 10;

/// Resident set size of this process, in bytes (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm's resident field");
    pages * 4096
}

fn next(engine: &Engine) -> Event {
    engine
        .events()
        .recv_timeout(Duration::from_secs(120))
        .expect("an engine event within 120 s")
}

#[test]
fn two_hundred_generations_with_images_keep_memory_flat() {
    let mut engine = Engine::spawn();
    engine
        .send(Command::Load {
            path: fixture("mobilevlm_v2"),
            options: LoadOptions::default(),
        })
        .unwrap();
    loop {
        match next(&engine) {
            Event::Loaded(_) => break,
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    let images = [
        "shapes_square.png",
        "photo_wide.jpg",
        "palette_trns.png",
        "gray16.png",
        "exif_rot6.jpg",
    ];
    let (mut baseline, mut peak) = (0, 0);
    for turn in 1..=TURNS {
        let image = fixture("images").join(images[turn % images.len()]);
        // A fresh conversation each time, alternating one and two images.
        let mut message = Message::user(format!("Turn {turn}: what is shown?")).with_image(&image);
        if turn % 2 == 0 {
            message = message.with_image(fixture("images").join("tiny_1x1.png"));
        }
        let request = GenerateRequest {
            messages: vec![message],
            params: SamplingParams {
                max_tokens: 12,
                ignore_eos: true,
                ..Default::default()
            },
            raw: false,
        };
        engine.send(Command::Generate(request)).unwrap();
        loop {
            match next(&engine) {
                Event::Finished { stop, metrics, .. } => {
                    assert_eq!(stop, StopReason::MaxTokens, "turn {turn}");
                    assert_eq!(metrics.generated_tokens, 12);
                    break;
                }
                Event::Error(e) => panic!("turn {turn}: {e}"),
                _ => {}
            }
        }
        let rss = rss_bytes();
        peak = peak.max(rss);
        if turn == BASELINE_TURN {
            baseline = rss;
        }
    }
    let end = rss_bytes();
    let growth = end as f64 / baseline as f64 - 1.0;
    eprintln!(
        "soak: {TURNS} generations with images; RSS after turn {BASELINE_TURN}: {:.1} MiB, \
         after turn {TURNS}: {:.1} MiB ({:+.2}%), peak {:.1} MiB",
        baseline as f64 / 1048576.0,
        end as f64 / 1048576.0,
        growth * 100.0,
        peak as f64 / 1048576.0
    );
    assert!(
        growth.abs() <= 0.05,
        "RSS moved {:+.2}% between turn {BASELINE_TURN} and turn {TURNS}",
        growth * 100.0
    );
}
