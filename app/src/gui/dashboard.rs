//! The latency dashboard: where the last turn's time went (image preprocessing, vision
//! tower, projector, prefill, first token, decode), each recent turn's timeline as a small
//! Gantt chart (what overlapped with what, and what ran before the request), memory
//! (weights, KV cache, the process), a live tokens-per-second plot while an answer is
//! written, a plot across turns, and a table of recent turns that copies as CSV.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use egui_plot::{Legend, Line, Plot, Points};
use pocketvlm_engine::metrics::{Span, Stage, process_memory_bytes};
use pocketvlm_engine::{StopReason, TurnMetrics};

use super::format;

/// Turns kept for the table and the history plot.
pub const HISTORY: usize = 50;
/// Recent turns drawn as timelines.
const TIMELINES: usize = 5;

#[derive(Clone, Debug)]
pub struct TurnRecord {
    pub turn: usize,
    pub model: String,
    pub stop: StopReason,
    pub metrics: TurnMetrics,
}

/// Token arrival times of the answer being written (or the last one).
#[derive(Default)]
struct Live {
    started: Option<Instant>,
    /// Seconds from the request to each token.
    tokens: Vec<f64>,
    running: bool,
}

#[derive(Default)]
pub struct Dashboard {
    pub history: VecDeque<TurnRecord>,
    turns: usize,
    live: Live,
    rss: Option<u64>,
    rss_at: Option<Instant>,
}

impl Dashboard {
    pub fn start_turn(&mut self) {
        self.live = Live {
            started: Some(Instant::now()),
            tokens: Vec::new(),
            running: true,
        };
    }

    /// A token arrived from the engine at `at`.
    pub fn token(&mut self, at: Instant) {
        if let Some(s) = self.live.started {
            self.live
                .tokens
                .push(at.saturating_duration_since(s).as_secs_f64());
        }
    }

    /// The turn ended without metrics (an error).
    pub fn abort_turn(&mut self) {
        self.live.running = false;
    }

    pub fn finish_turn(&mut self, model: String, stop: StopReason, metrics: TurnMetrics) {
        self.live.running = false;
        self.turns += 1;
        self.history.push_back(TurnRecord {
            turn: self.turns,
            model,
            stop,
            metrics,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.rss_at = None;
    }

    pub fn last(&self) -> Option<&TurnRecord> {
        self.history.back()
    }

    /// The table as CSV, oldest turn first.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "turn,model,stop,images,prompt_tokens,generated_tokens,tokenize_ms,image_preprocess_ms,vision_encode_ms,projector_ms,prefill_ms,ttft_ms,decode_ms,decode_tok_s,total_ms,weight_bytes,kv_cache_bytes,process_memory_bytes\n",
        );
        for r in &self.history {
            let m = &r.metrics;
            out.push_str(&format!(
                "{},{},{:?},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{}\n",
                r.turn,
                csv_field(&r.model),
                r.stop,
                m.images,
                m.prompt_tokens,
                m.generated_tokens,
                m.tokenize_ms,
                m.image_preprocess_ms,
                m.vision_encode_ms,
                m.projector_ms,
                m.prefill_ms,
                m.ttft_ms,
                m.decode_ms,
                m.decode_tok_s(),
                m.total_ms,
                m.weight_bytes,
                m.kv_cache_bytes,
                m.process_memory_bytes.map(|b| b.to_string()).unwrap_or_default(),
            ));
        }
        out
    }

    /// Tokens per second over the last half second (or since the first token, early on),
    /// at each token of the live answer.
    fn live_rate(&self) -> Vec<[f64; 2]> {
        const WINDOW: f64 = 0.5;
        let t = &self.live.tokens;
        let Some(&first) = t.first() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(t.len());
        let mut lo = 0;
        for (i, &now) in t.iter().enumerate() {
            while t[lo] <= now - WINDOW {
                lo += 1;
            }
            let span = (now - first).min(WINDOW);
            // Too early for a rate that means anything.
            if span >= 0.05 {
                let tokens = if now - first < WINDOW { i } else { i + 1 - lo };
                out.push([now, tokens as f64 / span]);
            }
        }
        out
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, weights: Option<u64>) {
        if self.live.running {
            ui.ctx().request_repaint_after(Duration::from_millis(100));
        }
        if self
            .rss_at
            .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
        {
            self.rss = process_memory_bytes();
            self.rss_at = Some(Instant::now());
        }
        ui.heading("Last turn");
        match self.last().cloned() {
            None => {
                ui.weak("Send a message to see where the time goes.");
            }
            Some(r) => breakdown(ui, &r),
        }
        if self.history.iter().any(|r| !r.metrics.timeline.is_empty()) {
            ui.add_space(6.0);
            ui.heading("Timelines");
            ui.weak("0 is when the message was sent; the white tick is the first token.");
            for r in self.history.iter().rev().take(TIMELINES) {
                ui.horizontal(|ui| {
                    ui.label(format!("#{}", r.turn)).on_hover_text(&r.model);
                    timeline(ui, r);
                });
            }
        }
        ui.add_space(6.0);
        ui.heading("Memory");
        let last = self.last().map(|r| &r.metrics);
        egui::Grid::new("memory").num_columns(2).show(ui, |ui| {
            ui.weak("Weights");
            ui.label(
                weights
                    .or(last.map(|m| m.weight_bytes as u64))
                    .map_or("—".into(), format::bytes),
            );
            ui.end_row();
            ui.weak("KV cache");
            ui.label(last.map_or("—".into(), |m| format::bytes(m.kv_cache_bytes as u64)));
            ui.end_row();
            ui.weak("Process");
            ui.label(self.rss.map_or("—".into(), format::bytes));
            ui.end_row();
        });

        ui.add_space(6.0);
        ui.heading(if self.live.running {
            "Decode speed (live)"
        } else {
            "Decode speed (last answer)"
        });
        let points = self.live_rate();
        Plot::new("live-rate")
            .height(110.0)
            .allow_zoom(false)
            .allow_drag(false)
            .allow_scroll(false)
            .include_y(0.0)
            .x_axis_label("s")
            .y_axis_label("tok/s")
            .show(ui, |p| {
                p.line(
                    Line::new("tok/s", points)
                        .color(egui::Color32::from_rgb(80, 190, 120))
                        .width(2.0),
                );
            });

        ui.add_space(6.0);
        ui.heading("Across turns");
        let ttft: Vec<[f64; 2]> = self
            .history
            .iter()
            .map(|r| [r.turn as f64, r.metrics.ttft_ms])
            .collect();
        let rate: Vec<[f64; 2]> = self
            .history
            .iter()
            .map(|r| [r.turn as f64, r.metrics.decode_tok_s()])
            .collect();
        let last_turn = self.history.back().map_or(1, |r| r.turn) as f64;
        let first_turn = self.history.front().map_or(1, |r| r.turn) as f64;
        Plot::new("history-rate")
            .height(90.0)
            .include_x(first_turn - 0.5)
            .include_x(last_turn + 0.5)
            .allow_zoom(false)
            .allow_drag(false)
            .allow_scroll(false)
            .include_y(0.0)
            .legend(Legend::default())
            .show(ui, |p| {
                let color = egui::Color32::from_rgb(80, 190, 120);
                p.points(
                    Points::new("decode tok/s", rate.clone())
                        .radius(3.0)
                        .color(color),
                );
                p.line(Line::new("decode tok/s", rate).color(color));
            });
        Plot::new("history-ttft")
            .height(90.0)
            .include_x(first_turn - 0.5)
            .include_x(last_turn + 0.5)
            .allow_zoom(false)
            .allow_drag(false)
            .allow_scroll(false)
            .include_y(0.0)
            .legend(Legend::default())
            .show(ui, |p| {
                let color = egui::Color32::from_rgb(90, 140, 230);
                p.points(
                    Points::new("first token ms", ttft.clone())
                        .radius(3.0)
                        .color(color),
                );
                p.line(Line::new("first token ms", ttft).color(color));
            });

        ui.add_space(6.0);
        ui.horizontal(|ui| {
            ui.heading("Recent turns");
            if ui
                .add_enabled(!self.history.is_empty(), egui::Button::new("🗐 Copy CSV"))
                .on_hover_text("Copy every turn in the table as CSV")
                .clicked()
            {
                ui.ctx().copy_text(self.csv());
            }
        });
        self.table(ui);
    }

    fn table(&self, ui: &mut egui::Ui) {
        if self.history.is_empty() {
            ui.weak("No turns yet.");
            return;
        }
        egui::ScrollArea::horizontal()
            .id_salt("turns-table")
            .show(ui, |ui| {
                egui::Grid::new("turns")
                    .striped(true)
                    .num_columns(7)
                    .spacing([10.0, 2.0])
                    .show(ui, |ui| {
                        for h in ["#", "img ms", "prefill", "TTFT", "tok/s", "tokens", "total"] {
                            ui.strong(h);
                        }
                        ui.end_row();
                        for r in self.history.iter().rev().take(12) {
                            let m = &r.metrics;
                            ui.label(r.turn.to_string()).on_hover_text(&r.model);
                            ui.label(format!("{:.0}", m.image_ms()));
                            ui.label(format!("{:.0}", m.prefill_ms));
                            ui.label(format!("{:.0}", m.ttft_ms));
                            ui.label(format!("{:.1}", m.decode_tok_s()));
                            ui.label(format!("{}+{}", m.prompt_tokens, m.generated_tokens));
                            ui.label(format!("{:.0}", m.total_ms));
                            ui.end_row();
                        }
                    });
            });
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A stage's colour, the same in the breakdown and on the timelines.
fn stage_color(stage: Stage) -> egui::Color32 {
    match stage {
        Stage::Tokenize => egui::Color32::from_rgb(130, 130, 130),
        Stage::ImagePreprocess => egui::Color32::from_rgb(230, 160, 60),
        Stage::VisionEncode => egui::Color32::from_rgb(220, 100, 80),
        Stage::Projector => egui::Color32::from_rgb(200, 80, 160),
        Stage::Prefill => egui::Color32::from_rgb(90, 140, 230),
        Stage::Decode => egui::Color32::from_rgb(80, 190, 120),
    }
}

/// One bar of a timeline: a span on its stage's lane, at fractions of the shown range.
#[derive(Clone, Debug, PartialEq)]
struct Bar {
    lane: usize,
    from: f32,
    to: f32,
    span: usize,
}

/// Lays a turn's spans out for a Gantt chart: one lane per stage (in pipeline order), the
/// range from the earliest start (work done ahead of the request starts before 0) or the
/// request to the latest end. Returns the range in ms and the bars.
fn gantt(spans: &[Span]) -> Option<((f64, f64), Vec<Bar>)> {
    let t0 = spans.iter().map(|s| s.start_ms).fold(0.0, f64::min);
    let t1 = spans.iter().map(|s| s.end_ms).fold(f64::MIN, f64::max);
    if spans.is_empty() || t1 <= t0 {
        return None;
    }
    let at = |ms: f64| ((ms - t0) / (t1 - t0)) as f32;
    let bars = spans
        .iter()
        .enumerate()
        .map(|(i, s)| Bar {
            lane: Stage::ALL.iter().position(|&st| st == s.stage).unwrap_or(0),
            from: at(s.start_ms),
            to: at(s.end_ms.max(s.start_ms)),
            span: i,
        })
        .collect();
    Some(((t0, t1), bars))
}

/// A turn's timeline: a lane per stage, a line at the request (0 ms), a tick at the first
/// token; hovering a bar tells what it was and how long it took.
fn timeline(ui: &mut egui::Ui, r: &TurnRecord) {
    let m = &r.metrics;
    let Some(((t0, t1), bars)) = gantt(&m.timeline) else {
        ui.weak("—");
        return;
    };
    const LANE: f32 = 4.0;
    let height = LANE * Stage::ALL.len() as f32 + 2.0;
    let (rect, response) = ui.allocate_exact_size(
        egui::vec2(ui.available_width(), height),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
    let x = |f: f32| rect.left() + f * rect.width();
    let frac = |ms: f64| ((ms - t0) / (t1 - t0)) as f32;
    let mut hovered = None;
    for b in &bars {
        let top = rect.top() + 1.0 + b.lane as f32 * LANE;
        let (x0, x1) = (x(b.from), x(b.to).max(x(b.from) + 1.0));
        let bar = egui::Rect::from_min_max(egui::pos2(x0, top), egui::pos2(x1, top + LANE - 1.0));
        painter.rect_filled(bar, 0.0, stage_color(m.timeline[b.span].stage));
        if let Some(p) = response.hover_pos()
            && p.x >= x0 - 1.0
            && p.x <= x1 + 1.0
            && p.y >= top
            && p.y < top + LANE
        {
            hovered = Some(b.span);
        }
    }
    let request = x(frac(0.0));
    painter.vline(
        request,
        rect.y_range(),
        (1.0, ui.visuals().weak_text_color()),
    );
    if m.ttft_ms > 0.0 {
        let tick = x(frac(m.ttft_ms));
        painter.vline(
            tick,
            rect.y_range(),
            egui::Stroke::new(1.5, egui::Color32::WHITE),
        );
    }
    let text = match hovered.map(|i| &m.timeline[i]) {
        Some(s) => format!(
            "{}: {} ({} from {:+.0} ms)",
            s.stage.name(),
            s.label,
            format::ms(s.ms()),
            s.start_ms
        ),
        None => format!(
            "{} ms span; first token at {}; {} of {} prompt positions reused",
            (t1 - t0).round(),
            format::ms(m.ttft_ms),
            m.reused_tokens,
            m.prompt_tokens
        ),
    };
    response.on_hover_text(text);
}

/// The stages of a turn as a bar and a table.
fn breakdown(ui: &mut egui::Ui, r: &TurnRecord) {
    let m = &r.metrics;
    let stages = [
        (Stage::Tokenize, m.tokenize_ms),
        (Stage::ImagePreprocess, m.image_preprocess_ms),
        (Stage::VisionEncode, m.vision_encode_ms),
        (Stage::Projector, m.projector_ms),
        (Stage::Prefill, m.prefill_ms),
        (Stage::Decode, m.decode_ms),
    ]
    .map(|(st, ms)| (st.name(), ms, stage_color(st)));
    let total: f64 = stages.iter().map(|s| s.1).sum::<f64>().max(1e-9);
    let (rect, _) =
        ui.allocate_exact_size(egui::vec2(ui.available_width(), 14.0), egui::Sense::hover());
    let mut x = rect.left();
    for (_, ms, color) in stages {
        let w = (ms / total) as f32 * rect.width();
        if w > 0.0 {
            let seg =
                egui::Rect::from_min_size(egui::pos2(x, rect.top()), egui::vec2(w, rect.height()));
            ui.painter().rect_filled(seg, 0.0, color);
            x += w;
        }
    }
    egui::Grid::new("breakdown")
        .num_columns(2)
        .spacing([12.0, 2.0])
        .show(ui, |ui| {
            for (name, ms, color) in stages {
                let image_stage =
                    name.starts_with("Image") || name == "Vision encode" || name == "Projector";
                if image_stage && m.images == 0 {
                    continue;
                }
                ui.horizontal(|ui| {
                    let (r, _) =
                        ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
                    ui.painter().rect_filled(r, 2.0, color);
                    ui.label(name);
                });
                ui.label(format::ms(ms));
                ui.end_row();
            }
            ui.strong("Time to first token");
            ui.strong(format::ms(m.ttft_ms));
            ui.end_row();
            ui.strong("Decode speed");
            ui.strong(format::rate(m.decode_tok_s()));
            ui.end_row();
            ui.label("Prefill speed");
            ui.label(format::rate(m.prefill_tok_s()));
            ui.end_row();
            ui.label("Total");
            ui.label(format::ms(m.total_ms));
            ui.end_row();
            ui.label("Tokens");
            ui.label(format!(
                "{} prompt{}, {} generated",
                m.prompt_tokens,
                if m.images > 0 {
                    format!(
                        " ({} image{})",
                        m.images,
                        if m.images == 1 { "" } else { "s" }
                    )
                } else {
                    String::new()
                },
                m.generated_tokens
            ));
            ui.end_row();
            if m.reused_tokens > 0 {
                ui.label("Reused");
                ui.label(format!(
                    "{} prompt positions kept from the last turn",
                    m.reused_tokens
                ));
                ui.end_row();
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_row_per_turn_and_quotes_names() {
        let mut d = Dashboard::default();
        d.finish_turn(
            "a,b".into(),
            StopReason::Eos,
            TurnMetrics {
                generated_tokens: 3,
                ..Default::default()
            },
        );
        let csv = d.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("1,\"a,b\",Eos,0,0,3,"), "{}", lines[1]);
        assert_eq!(
            lines[0].split(',').count(),
            lines[1].split(',').count() - 1 // the quoted name holds a comma
        );
    }

    fn span(stage: Stage, start_ms: f64, end_ms: f64) -> Span {
        Span {
            stage,
            start_ms,
            end_ms,
            label: String::new(),
            tokens: 0,
        }
    }

    #[test]
    fn gantt_puts_work_before_the_request_left_of_zero_on_its_lane() {
        // Vision encoded while typing (−300…−100 ms), then prefill and decode.
        let spans = [
            span(Stage::VisionEncode, -300.0, -100.0),
            span(Stage::Prefill, 0.0, 100.0),
            span(Stage::Prefill, 100.0, 200.0),
            span(Stage::Decode, 200.0, 500.0),
        ];
        let ((t0, t1), bars) = gantt(&spans).unwrap();
        assert_eq!((t0, t1), (-300.0, 500.0));
        assert_eq!(bars[0].lane, 2);
        assert_eq!((bars[0].from, bars[0].to), (0.0, 0.25));
        assert_eq!((bars[1].lane, bars[1].from), (4, 0.375));
        assert_eq!((bars[3].lane, bars[3].to), (5, 1.0));
        // Overlapping work shares the x range on different lanes.
        let spans = [
            span(Stage::VisionEncode, 0.0, 100.0),
            span(Stage::Prefill, 50.0, 100.0),
        ];
        let (_, bars) = gantt(&spans).unwrap();
        assert!(bars[1].from < bars[0].to && bars[0].lane != bars[1].lane);
        assert!(gantt(&[]).is_none());
    }

    #[test]
    fn live_rate_counts_tokens_in_the_last_second() {
        let mut d = Dashboard::default();
        d.live.tokens = (0..21).map(|i| i as f64 * 0.1).collect();
        let r = d.live_rate();
        assert!(r.iter().all(|p| (p[1] - 10.0).abs() < 1.01), "{r:?}");
        // A burst of tokens at one instant is no spike.
        d.live.tokens = vec![0.0, 0.0, 0.0, 0.01];
        assert!(d.live_rate().is_empty());
    }
}
