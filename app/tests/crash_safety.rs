//! Nothing is lost when the app is killed: a real child process runs the app (the same
//! `PocketApp` the window shows, driven without a window) through chat after chat on a real
//! model, and is killed with SIGKILL in the middle of an answer. While it runs, every
//! conversation file read from outside must parse (never half-written); after the kill,
//! every message that was on disk is still there when the app's store opens the folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pocketvlm::gui::engine_link::ModelState;
use pocketvlm::gui::store::Store;
use pocketvlm::gui::{Action, AppConfig, PocketApp};
use pocketvlm_tests::fixture;

/// Set in the child's environment: the data folder it writes to.
const CHILD_ENV: &str = "POCKETVLM_CRASH_CHILD_DIR";

/// One frame of the app without a window.
fn frame(ctx: &egui::Context, app: &mut PocketApp) {
    let mut out = ctx.run_ui(egui::RawInput::default(), |ui| app.ui(ui));
    // No renderer takes the textures: drop them.
    out.textures_delta.clear();
}

fn run_until(ctx: &egui::Context, app: &mut PocketApp, done: impl Fn(&PocketApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(app) {
        assert!(Instant::now() < deadline, "child: timed out");
        frame(ctx, app);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The child's side: a chat per question, forever, until it is killed.
#[test]
fn child_chats_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Run as an ordinary test: only the parent below starts this.
    };
    let ctx = egui::Context::default();
    let config = AppConfig {
        data_dir: PathBuf::from(dir),
        scan_roots: vec![],
        load_demo: false,
    };
    let mut app = PocketApp::new(&ctx, config);
    app.act(
        &ctx,
        Action::LoadModel {
            path: fixture("llama_gqa"),
            mmproj: None,
        },
    );
    run_until(&ctx, &mut app, |a| {
        matches!(a.engine.model, ModelState::Ready(_))
    });
    for i in 0.. {
        app.act(&ctx, Action::NewConversation);
        app.composer.text = format!("question number {i}");
        app.act(&ctx, Action::Send);
        run_until(&ctx, &mut app, |a| {
            a.pending.is_none() && !a.engine.is_busy()
        });
    }
}

/// Every conversation file now in `dir`: (file name, message texts). A file that exists but
/// does not parse fails the test: it was seen half-written.
fn snapshot(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue; // Renamed away between listing and reading.
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{name} was half-written ({err}): {bytes:?}"));
        let texts = v["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["text"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.push((name, texts));
    }
    out.sort();
    out
}

fn kill(child: &mut Child) {
    // SIGKILL: no destructors, no flush, as when the OS or the user kills the app.
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn killing_the_app_mid_answer_loses_no_completed_message() {
    let tmp = tempfile::tempdir().unwrap();
    let conversations = tmp.path().join("conversations");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_chats_until_killed", "--nocapture"])
        .env(CHILD_ENV, tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = vec![];
    let mut reads = 0;
    // Watch until three chats are complete and a fourth is being answered, then kill.
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited on its own: {status}");
        }
        assert!(Instant::now() < deadline, "no progress: {last:?}");
        let now = snapshot(&conversations);
        reads += 1;
        let answered = now.iter().filter(|(_, m)| m.len() == 2).count();
        let asking = now.iter().any(|(_, m)| m.len() == 1);
        last = now;
        if answered >= 3 && asking {
            kill(&mut child);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(reads > 10, "the files were read while being written");

    // Everything seen before the kill is there, and nothing is reported damaged.
    let store = Store::open(tmp.path()).unwrap();
    let (restored, problems) = store.load_conversations();
    assert!(
        problems.is_empty(),
        "{:?}",
        problems.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    for (name, texts) in &last {
        let id = name.trim_end_matches(".json");
        let c = restored
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("{name} is gone"));
        let got: Vec<&str> = c.messages.iter().map(|m| m.text.as_str()).collect();
        assert!(
            got.len() >= texts.len()
                && got[..texts.len()] == texts.iter().map(String::as_str).collect::<Vec<_>>()[..],
            "{name}: {got:?} does not keep {texts:?}"
        );
    }
    // The question being answered at the kill is kept, unanswered, for the user to resend.
    assert!(restored.iter().any(|c| c.messages.len() == 1));
    assert!(restored.len() >= 4);
}
