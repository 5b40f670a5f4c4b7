//! The desktop app driven through egui_kittest, against real tiny models on the real
//! engine thread: the same code `cargo run --release` opens, minus the window.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use pocketvlm::gui::engine_link::ModelState;
use pocketvlm::gui::scan::{RootKind, ScanRoot};
use pocketvlm::gui::{AppConfig, PocketApp};
use pocketvlm_engine::metrics::Stage;
use pocketvlm_engine::{Role as ChatRole, StopReason};
use pocketvlm_tests::{fixture, require};

/// The app, created on the first frame so that it uses the harness's egui context.
struct TestApp {
    config: AppConfig,
    app: Option<PocketApp>,
}

fn config(data_dir: &Path) -> AppConfig {
    AppConfig {
        data_dir: data_dir.to_path_buf(),
        scan_roots: vec![ScanRoot {
            path: fixture(""),
            kind: RootKind::ModelsFolder,
        }],
        load_demo: false,
    }
}

/// A harness for a test whose tiny random models write random text: any glyph may come up,
/// so missing ones draw as boxes (tests without model output use [`strict_harness`]).
fn harness(data_dir: &Path) -> Harness<'static, TestApp> {
    build(data_dir, Harness::builder().allow_missing_glyphs())
}

/// A harness that fails on any glyph our fonts lack: the app's own text and icons must all
/// be drawable.
fn strict_harness(data_dir: &Path) -> Harness<'static, TestApp> {
    build(data_dir, Harness::builder())
}

fn build(
    data_dir: &Path,
    builder: egui_kittest::HarnessBuilder<TestApp>,
) -> Harness<'static, TestApp> {
    let state = TestApp {
        config: config(data_dir),
        app: None,
    };
    let mut h = builder.with_size(egui::vec2(1280.0, 800.0)).build_ui_state(
        |ui, s: &mut TestApp| {
            let cfg = s.config.clone();
            s.app
                .get_or_insert_with(|| PocketApp::new(ui.ctx(), cfg))
                .ui(ui)
        },
        state,
    );
    h.step();
    h
}

fn app<'a>(h: &'a Harness<TestApp>) -> &'a PocketApp {
    h.state()
        .app
        .as_ref()
        .expect("the app starts on the first frame")
}

fn app_mut<'a>(h: &'a mut Harness<TestApp>) -> &'a mut PocketApp {
    h.state_mut()
        .app
        .as_mut()
        .expect("the app starts on the first frame")
}

/// Steps the UI until `done` holds: the engine and the image workers run on their own
/// threads, so results arrive between frames.
#[track_caller]
fn run_until(h: &mut Harness<TestApp>, what: &str, done: impl Fn(&PocketApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        h.step();
        if done(app(h)) {
            h.step();
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Loads a fixture model through the model window, as a user would.
fn load_model(h: &mut Harness<TestApp>, name: &str) {
    h.get_by_label("🗁 Models…").click();
    step_until_label(h, "Path");
    replace_text(h, "Path", &fixture(name).display().to_string());
    h.get_by_label("Load model").click();
    run_until(h, &format!("{name} to load"), |a| {
        matches!(a.engine.model, ModelState::Ready(_))
    });
    assert!(!app(h).picker.open, "the model window closes after a load");
}

fn composer<'a>(h: &'a Harness<'_, TestApp>) -> egui_kittest::Node<'a> {
    h.get_by(|n| {
        n.data()
            .placeholder()
            .is_some_and(|p| p.starts_with("Message PocketVLM"))
    })
}

fn type_and_send(h: &mut Harness<TestApp>, text: &str) {
    let c = composer(h);
    c.focus();
    c.type_text(text);
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
}

fn messages(h: &Harness<TestApp>) -> Vec<pocketvlm::gui::conversation::ChatMessage> {
    app(h)
        .current()
        .map(|c| c.messages.clone())
        .unwrap_or_default()
}

fn wait_for_answer(h: &mut Harness<TestApp>) {
    run_until(h, "the answer", |a| {
        a.pending.is_none() && !a.engine.is_busy()
    });
}

/// Replaces the text of the field labelled `label`.
fn replace_text(h: &mut Harness<TestApp>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

/// The text field whose text is `value`, once it shows up.
#[track_caller]
fn field_with<'a>(h: &'a mut Harness<'_, TestApp>, value: &str) -> egui_kittest::Node<'a> {
    let is_it = |n: &egui_kittest::kittest::AccessKitNode<'_>, value: &str| {
        matches!(n.role(), Role::TextInput | Role::MultilineTextInput)
            && n.value().as_deref() == Some(value)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.query_by(|n| is_it(n, value)).is_none() {
        assert!(Instant::now() < deadline, "no text field holds {value:?}");
        h.step();
    }
    let value = value.to_string();
    h.get_by(move |n| is_it(n, &value))
}

/// Steps until a node labelled `label` shows up (a texture decoded in the background).
#[track_caller]
fn step_until_label(h: &mut Harness<TestApp>, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.query_by_label(label).is_none() {
        assert!(Instant::now() < deadline, "timed out waiting for {label:?}");
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
}

/// Sidebar rows (buttons, not plain labels) named `title`.
fn sidebar_rows(h: &Harness<TestApp>, title: &str) -> usize {
    h.query_all_by(|n| n.label().as_deref() == Some(title) && n.role() != Role::Label)
        .count()
}

/// A file dropped onto the window.
#[derive(Debug)]
struct DroppedFile(PathBuf);

impl egui::DroppedFile for DroppedFile {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn drop_file(h: &mut Harness<TestApp>, path: &Path) {
    h.input_mut().hovered_files.push(egui::HoveredFile {
        path: Some(path.to_path_buf()),
        mime: String::new(),
    });
    h.step();
    assert!(
        app(h).drop_hover,
        "the drop overlay shows while a file hovers"
    );
    h.input_mut().hovered_files.clear();
    h.input_mut()
        .dropped_files
        .push(Arc::new(DroppedFile(path.to_path_buf())));
    h.step();
}

#[test]
fn a_typed_prompt_is_sent_and_the_answer_streams_in() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.get_by_label("Choose a model…");
    load_model(&mut h, "llama_gqa");
    h.get_by_label_contains("Ask llama_gqa anything");

    // Shift+Enter is a new line, not a send.
    let c = composer(&h);
    c.focus();
    c.type_text("first line");
    h.step();
    h.key_press_modifiers(egui::Modifiers::SHIFT, egui::Key::Enter);
    h.step();
    assert_eq!(app(&h).composer.text, "first line\n");
    assert!(messages(&h).is_empty());

    composer(&h).type_text("What is the capital of France?");
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
    // While the answer is written the Send button is replaced by Stop.
    assert!(app(&h).pending.is_some() || messages(&h).len() == 2);
    wait_for_answer(&mut h);

    let m = messages(&h);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0].role, ChatRole::User);
    assert_eq!(m[0].text, "first line\nWhat is the capital of France?");
    assert_eq!(m[1].role, ChatRole::Assistant);
    assert!(!m[1].text.is_empty());
    assert!(
        m[1].metrics
            .as_ref()
            .is_some_and(|x| x.generated_tokens > 0)
    );
    assert_eq!(app(&h).composer.text, "", "the composer empties on send");
    h.get_by_label("You");
    h.get_by_label_contains("tok/s · first token");
    // The title follows the first message.
    assert_eq!(app(&h).current().unwrap().title, "first line");

    // Saved after the message: the file on disk has the question and the answer.
    let id = app(&h).current().unwrap().id.clone();
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join(format!("conversations/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["messages"][0]["text"], m[0].text.as_str());
    assert_eq!(saved["messages"][1]["text"], m[1].text.as_str());

    // Regenerate replaces the answer; edit-and-resend replaces the question.
    h.get_by_label("⟳ Regenerate").click();
    h.step();
    wait_for_answer(&mut h);
    assert_eq!(messages(&h).len(), 2);
    h.get_by_label("✏ Edit").click();
    h.step();
    let edit = field_with(&mut h, "first line\nWhat is the capital of France?");
    edit.focus();
    edit.type_text(" Answer briefly.");
    h.step();
    h.get_by_label("Send edited").click();
    h.step();
    wait_for_answer(&mut h);
    let m = messages(&h);
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[0].text,
        "first line\nWhat is the capital of France? Answer briefly."
    );
    h.check_accessibility();
}

#[test]
fn a_dropped_image_shows_its_thumbnail_and_the_dashboard_its_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    load_model(&mut h, "mobilevlm_v2");

    drop_file(&mut h, &fixture("images/shapes_square.png"));
    run_until(&mut h, "the image import", |a| {
        a.composer.attachments.iter().all(|a| a.stored.is_some())
    });
    assert_eq!(app(&h).composer.attachments.len(), 1);
    h.get_by_label("attached image shapes_square.png");
    assert!(!app(&h).drop_hover);
    // The image was copied into the data folder.
    let stored = app(&h).composer.attachments[0].stored.clone().unwrap();
    assert!(tmp.path().join("images").join(&stored).is_file());

    // A pasted image joins it.
    let pasted = egui::ColorImage::new([8, 6], vec![egui::Color32::GREEN; 48]);
    h.event(egui::Event::PasteImage(Arc::new(pasted)));
    h.step();
    run_until(&mut h, "the pasted image", |a| {
        a.composer.attachments.len() == 2
            && a.composer.attachments.iter().all(|a| a.stored.is_some())
    });
    h.get_by_label("attached image pasted image");
    // ... and can be removed again.
    let removes: Vec<_> = h.get_all_by_label("✖ Remove").collect();
    removes[1].click();
    h.step();
    assert_eq!(app(&h).composer.attachments.len(), 1);

    type_and_send(&mut h, "What is in this image?");
    wait_for_answer(&mut h);
    let m = messages(&h);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0].images, vec![stored]);
    step_until_label(&mut h, "image in message");

    // The dashboard shows where the time went, images included.
    let metrics = m[1].metrics.clone().unwrap();
    assert_eq!(metrics.images, 1);
    assert!(metrics.image_preprocess_ms > 0.0);
    assert!(metrics.vision_encode_ms > 0.0);
    assert!(metrics.projector_ms > 0.0);
    assert!(metrics.weight_bytes > 0 && metrics.kv_cache_bytes > 0);
    // The image was encoded as soon as it was attached, possibly before the request (then
    // its spans end at negative times): the first token comes after every image stage ends.
    let image_stages = [
        Stage::ImagePreprocess,
        Stage::VisionEncode,
        Stage::Projector,
    ];
    for span in metrics
        .timeline
        .iter()
        .filter(|s| image_stages.contains(&s.stage))
    {
        assert!(
            metrics.ttft_ms >= span.end_ms,
            "{span:?} ends after the first token"
        );
    }
    for label in [
        "Image preprocess",
        "Vision encode",
        "Projector",
        "Prefill",
        "Time to first token",
        "Decode speed",
    ] {
        h.get_by_label(label);
    }
    h.get_by_label("Across turns");
    let csv = app(&h).inspector.dashboard.csv();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("1,mobilevlm_v2,Eos,1,")
            || csv.contains(",1,"),
        "{csv}"
    );
    h.get_by_label("🗐 Copy CSV").click();
    h.step();

    // A click on the thumbnail opens the large view.
    h.get_by_label("image in message").click();
    h.step();
    step_until_label(&mut h, "full-size image");
    h.get_by_label("Close").click();
    h.step();
    h.step();
    assert!(h.query_by_label("full-size image").is_none());
}

#[test]
fn a_dropped_file_that_is_not_an_image_is_refused_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = strict_harness(tmp.path());
    let c = composer(&h);
    c.focus();
    c.type_text("my draft");
    h.step();

    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "not an image").unwrap();
    drop_file(&mut h, &notes);
    run_until(&mut h, "the refusal", |a| a.notices.errors().count() == 1);
    h.get_by_label_contains("notes.txt is not an image");
    assert!(app(&h).composer.attachments.is_empty());
    assert_eq!(app(&h).composer.text, "my draft");

    // A damaged image says so too.
    let broken = tmp.path().join("broken.png");
    let png = std::fs::read(fixture("images/shapes_square.png")).unwrap();
    std::fs::write(&broken, &png[..png.len() / 3]).unwrap();
    drop_file(&mut h, &broken);
    run_until(&mut h, "the second refusal", |a| {
        a.notices.errors().count() == 2
    });
    h.get_by_label_contains("broken.png looks like an image but is damaged");

    // Errors are dismissed one by one.
    for _ in 0..2 {
        h.get_all_by_label("✖").next().unwrap().click();
        h.step();
    }
    assert_eq!(app(&h).notices.errors().count(), 0);
    assert_eq!(app(&h).composer.text, "my draft");
    h.check_accessibility();
}

#[test]
fn stop_cancels_the_answer_within_a_step() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    // This fixture runs to the end of its context without an end-of-sequence token.
    load_model(&mut h, "mobilevlm_v2");
    type_and_send(&mut h, "Tell me a long story.");
    run_until(&mut h, "the first tokens", |a| {
        a.pending.as_ref().is_some_and(|p| p.tokens > 0)
    });
    h.get_by_label("⏹ Stop").click();
    h.step();
    wait_for_answer(&mut h);
    let m = messages(&h);
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].stop, Some(StopReason::Cancelled));
    let generated = m[1].metrics.as_ref().unwrap().generated_tokens;
    assert!(generated > 0 && generated < 400, "{generated}");
    h.get_by_label_contains("stopped");
    // The app takes the next message at once.
    h.get_by_label("Send");
}

#[test]
fn load_settings_and_generation_settings_can_be_switched() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.get_by_label("🗁 Models…").click();
    step_until_label(&mut h, "Path");
    // The scan lists the fixtures with family and size.
    run_until(&mut h, "the model scan", |a| a.picker.scanner.scanned_once);
    h.get_by_label("llama_gqa");
    h.get_by_label("🖼 mobilevlm-v2");

    // Quantise the language model to q8_0 and run on the CPU.
    h.get_by_label("Language model weights").click();
    step_until_label(&mut h, "q8_0");
    h.get_by_label("q8_0").click();
    h.step();
    h.get_by_label("Backend").click();
    step_until_label(&mut h, "cpu");
    h.get_by_label("cpu").click();
    h.step();
    assert_eq!(app(&h).settings.load.quant.as_deref(), Some("q8_0"));
    assert_eq!(
        app(&h).settings.load.backend,
        pocketvlm_engine::BackendKind::Cpu
    );

    // Load from the scan list: the Load button on llama_gqa's row (scrolled into view: the
    // fixtures listed before it may push it below the window's fold).
    let at = h.get_by_label("llama_gqa").rect().left_top() - egui::vec2(0.0, 150.0);
    h.event(egui::Event::PointerMoved(at));
    h.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: egui::vec2(0.0, -300.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Unknown,
        modifiers: egui::Modifiers::NONE,
    });
    for _ in 0..10 {
        h.step();
    }
    let row_y = h.get_by_label("llama_gqa").rect().center().y;
    let load = h
        .get_all_by_label("Load")
        .find(|b| (b.rect().center().y - row_y).abs() < 8.0)
        .expect("a Load button on the llama_gqa row");
    load.click();
    run_until(&mut h, "the load", |a| {
        matches!(a.engine.model, ModelState::Ready(_))
    });
    let o = app(&h).loaded_with.clone().unwrap();
    assert_eq!(o.quant, Some(pocketvlm_engine::tensor::DType::Q8_0));
    assert_eq!(o.backend, pocketvlm_engine::BackendKind::Cpu);
    // The model card tells.
    h.get_by_label("🗁 Models…").click();
    step_until_label(&mut h, "Path");
    h.get_by_label("LLM q8_0 · vision as stored");
    h.get_by_label("256 tokens");
    h.get_by_label("⏏ Unload").click();
    run_until(&mut h, "the unload", |a| {
        matches!(a.engine.model, ModelState::None)
    });
    // Recent models remember it.
    assert_eq!(app(&h).settings.recent_models.len(), 1);

    // Load it again from the recent list.
    let recent_y = h.get_by_label("Recent").rect().bottom();
    let load = h
        .get_all_by_label("Load")
        .filter(|b| b.rect().top() > recent_y)
        .min_by(|a, b| a.rect().top().total_cmp(&b.rect().top()))
        .unwrap();
    load.click();
    run_until(&mut h, "the reload", |a| {
        matches!(a.engine.model, ModelState::Ready(_))
    });

    // Generation settings of a chat: the model's defaults, then the user's.
    type_and_send(&mut h, "hi");
    wait_for_answer(&mut h);
    h.get_by_label("⚙ Settings").click();
    h.step();
    let s = app(&h).current().unwrap().settings.clone();
    assert!(s.follow_model);
    let temperature = h.get_by_role_and_label(Role::Slider, "Temperature");
    temperature.set_value_accesskit(0.7);
    h.step();
    let top_k = h.get_by_role_and_label(Role::Slider, "Top-k");
    top_k.set_value_accesskit(40.0);
    h.step();
    h.step();
    let s = app(&h).current().unwrap().settings.clone();
    assert!((s.temperature - 0.7).abs() < 1e-6, "{s:?}");
    assert_eq!(s.top_k, 40);
    assert!(!s.follow_model);
    // Saved with the chat.
    let id = app(&h).current().unwrap().id.clone();
    let saved =
        std::fs::read_to_string(tmp.path().join(format!("conversations/{id}.json"))).unwrap();
    assert!(saved.contains("\"top_k\": 40"), "{saved}");
    h.get_by_label("Use the model's defaults").click();
    h.step();
    assert!(app(&h).current().unwrap().settings.follow_model);
    h.check_accessibility();
}

#[test]
fn engine_errors_are_shown_and_the_app_stays_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.get_by_label("🗁 Models…").click();
    step_until_label(&mut h, "Path");
    replace_text(
        &mut h,
        "Path",
        &tmp.path().join("no-such-model").display().to_string(),
    );
    h.get_by_label("Load model").click();
    run_until(&mut h, "the load error", |a| {
        a.notices.errors().count() == 1
    });
    h.get_by_label_contains("Could not load no-such-model");
    assert!(matches!(app(&h).engine.model, ModelState::None));

    // A text model refuses images before anything is sent.
    load_model(&mut h, "llama_gqa");
    drop_file(&mut h, &fixture("images/shapes_square.png"));
    run_until(&mut h, "the import", |a| {
        a.composer.attachments.iter().all(|a| a.stored.is_some())
    });
    type_and_send(&mut h, "what is this?");
    h.get_by_label_contains("is a text-only model");
    assert!(messages(&h).is_empty());
    assert_eq!(app(&h).composer.attachments.len(), 1, "nothing is lost");

    // The engine thread can be replaced, and the new one works.
    let ctx = h.ctx.clone();
    app_mut(&mut h).act(&ctx, pocketvlm::gui::Action::RestartEngine);
    h.step();
    assert!(app(&h).engine.is_alive());
    assert!(matches!(app(&h).engine.model, ModelState::None));
    load_model(&mut h, "llama_gqa");
    h.get_by_label("✖ Remove").click();
    h.step();
    type_and_send(&mut h, "hello");
    wait_for_answer(&mut h);
    assert_eq!(messages(&h).len(), 2);
}

#[test]
fn conversations_are_saved_restored_renamed_searched_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut h = harness(tmp.path());
        load_model(&mut h, "llama_gqa");
        type_and_send(&mut h, "apples are red");
        wait_for_answer(&mut h);
        h.get_by_label("➕ New chat").click();
        h.step();
        type_and_send(&mut h, "bananas are yellow");
        wait_for_answer(&mut h);
        assert_eq!(app(&h).conversations.len(), 2);
    }
    // A damaged file and one from a newer version are set aside and reported.
    let dir = tmp.path().join("conversations");
    std::fs::write(dir.join("damaged.json"), "{\"version\": 1, \"id\": 3").unwrap();
    std::fs::write(dir.join("newer.json"), "{\"version\": 7, \"id\": \"x\"}").unwrap();

    let mut h = harness(tmp.path());
    let a = app(&h);
    assert_eq!(a.conversations.len(), 2);
    assert_eq!(a.current().unwrap().title, "bananas are yellow");
    assert_eq!(a.current().unwrap().messages.len(), 2);
    h.get_by_label_contains("damaged.json could not be opened");
    h.get_by_label_contains("newer PocketVLM");
    assert!(std::fs::read_dir(&dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("newer.json.newer-v7-")
    }));

    // Search.
    let search = h.get_by(|n| n.data().placeholder() == Some("🔍 Search chats"));
    search.focus();
    search.type_text("apple");
    h.step();
    assert_eq!(sidebar_rows(&h, "apples are red"), 1);
    assert_eq!(sidebar_rows(&h, "bananas are yellow"), 0);

    // Rename.
    h.get_by_label("✏").click();
    h.step();
    let name = field_with(&mut h, "apples are red");
    name.type_text(" (fruit)");
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
    assert_eq!(sidebar_rows(&h, "apples are red (fruit)"), 1);
    let renamed = app(&h)
        .conversations
        .iter()
        .find(|c| c.title == "apples are red (fruit)")
        .expect("renamed")
        .clone();
    assert!(renamed.title_is_custom);

    // Delete, with confirmation.
    h.get_by_label("🗑").click();
    step_until_label(&mut h, "🗑 Delete");
    h.get_by_label("🗑 Delete").click();
    h.step();
    assert_eq!(app(&h).conversations.len(), 1);
    assert!(!dir.join(format!("{}.json", renamed.id)).exists());
}

#[test]
fn snapshot_of_a_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    // A saved conversation with markdown and a code block (whose copy icon needs the
    // emoji-icon font), stamped in the future so that its age always reads "just now".
    let convo = serde_json::json!({
        "version": 1,
        "id": "c-snapshot",
        "title": "Shapes",
        "created_unix": 4_000_000_000u64,
        "updated_unix": 4_000_000_000u64,
        "messages": [
            {"role": "user", "text": "Write hello world in Rust."},
            {"role": "assistant", "text": "Here it is:\n\n```rust\nfn main() {\n    println!(\"hello world\");\n}\n```\n\nIt **prints** a line.",
             "model": "mobilevlm_v2",
             "metrics": {"prompt_tokens": 12, "generated_tokens": 20, "tokenize_ms": 1.0, "prefill_ms": 10.0,
                         "ttft_ms": 12.0, "decode_ms": 100.0, "total_ms": 112.0},
             "stop": "Eos"}
        ],
        "settings": {}
    });
    std::fs::create_dir_all(tmp.path().join("conversations")).unwrap();
    std::fs::write(
        tmp.path().join("conversations/c-snapshot.json"),
        serde_json::to_string(&convo).unwrap(),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("settings.json"),
        r#"{"version": 1, "inspector_tab": "Settings", "selected_conversation": "c-snapshot"}"#,
    )
    .unwrap();
    let state = TestApp {
        config: AppConfig {
            data_dir: tmp.path().to_path_buf(),
            scan_roots: vec![],
            load_demo: false,
        },
        app: None,
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1100.0, 640.0))
        .wgpu()
        .build_ui_state(
            |ui, s: &mut TestApp| {
                let cfg = s.config.clone();
                s.app
                    .get_or_insert_with(|| PocketApp::new(ui.ctx(), cfg))
                    .ui(ui)
            },
            state,
        );
    h.run();
    assert_eq!(
        h.get_all_by_label("Shapes").count(),
        2,
        "the title in the top bar and the sidebar"
    );
    if !require(
        h.render().is_ok(),
        "a wgpu adapter for snapshots (mesa-vulkan-drivers)",
    ) {
        return;
    }
    h.snapshot("conversation");
}

#[test]
fn snapshot_of_the_drop_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    // The settings tab: the latency tab shows this process's memory, which varies.
    std::fs::write(
        tmp.path().join("settings.json"),
        r#"{"version": 1, "inspector_tab": "Settings"}"#,
    )
    .unwrap();
    let state = TestApp {
        config: AppConfig {
            data_dir: tmp.path().to_path_buf(),
            scan_roots: vec![],
            load_demo: false,
        },
        app: None,
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(900.0, 560.0))
        .wgpu()
        .build_ui_state(
            |ui, s: &mut TestApp| {
                let cfg = s.config.clone();
                s.app
                    .get_or_insert_with(|| PocketApp::new(ui.ctx(), cfg))
                    .ui(ui)
            },
            state,
        );
    h.run();
    h.input_mut().hovered_files.push(egui::HoveredFile {
        path: Some(fixture("images/shapes_square.png")),
        mime: "image/png".into(),
    });
    h.step();
    assert!(app(&h).drop_hover);
    if !require(
        h.render().is_ok(),
        "a wgpu adapter for snapshots (mesa-vulkan-drivers)",
    ) {
        return;
    }
    h.snapshot("drop_overlay");
}

#[test]
fn the_model_picker_role_is_reachable() {
    // Every input in the model window has a name (kittest's accessibility check), and
    // every glyph it draws is in our fonts.
    let tmp = tempfile::tempdir().unwrap();
    let mut h = strict_harness(tmp.path());
    h.get_by_label("🗁 Models…").click();
    h.step();
    run_until(&mut h, "the model scan", |a| a.picker.scanner.scanned_once);
    h.get_by_role(Role::Window);
    h.check_accessibility();
}

#[test]
fn a_panic_in_the_engine_is_shown_and_the_model_can_be_reloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    load_model(&mut h, "llama_gqa");
    type_and_send(&mut h, "first question");
    wait_for_answer(&mut h);
    app_mut(&mut h).engine.debug_panic("a kernel bug").unwrap();
    run_until(&mut h, "the panic's notice", |a| {
        a.notices.errors().count() == 1
    });
    h.get_by_label_contains("a kernel bug");
    assert!(app(&h).engine.is_alive());
    assert!(matches!(app(&h).engine.model, ModelState::None));
    assert_eq!(messages(&h).len(), 2, "the conversation is intact");
    load_model(&mut h, "llama_gqa");
    // (The first answer filled the tiny model's context: ask in a new chat.)
    h.get_by_label("➕ New chat").click();
    h.step();
    type_and_send(&mut h, "second question");
    wait_for_answer(&mut h);
    assert_eq!(messages(&h).len(), 2);
    assert!(messages(&h)[1].stop.is_some(), "answered");
    assert_eq!(app(&h).conversations.len(), 2);
}

/// The embedded default: with no model chosen before, the app starts with the demo model
/// loading; a sample scene is one click away and the demo answers about it.
#[test]
fn the_demo_model_loads_at_start_and_answers_about_a_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let state = TestApp {
        config: AppConfig {
            load_demo: true,
            ..config(tmp.path())
        },
        app: None,
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(
            |ui, s: &mut TestApp| {
                let cfg = s.config.clone();
                s.app
                    .get_or_insert_with(|| PocketApp::new(ui.ctx(), cfg))
                    .ui(ui)
            },
            state,
        );
    run_until(&mut h, "the demo model to load", |a| {
        matches!(a.engine.model, ModelState::Ready(_))
    });
    let demo = tmp.path().join("models").join("pocketvlm-demo");
    assert!(demo.join("model.safetensors").is_file());

    h.get_by_label("🖼 shapes.png").click();
    h.step();
    run_until(&mut h, "the sample import", |a| {
        a.composer.attachments.len() == 1 && a.composer.attachments[0].stored.is_some()
    });
    assert_eq!(app(&h).composer.text, "Describe the image.");
    h.get_by_label("Send").click();
    h.step();
    wait_for_answer(&mut h);
    let m = messages(&h);
    assert_eq!(m.len(), 2, "{m:?}");
    // A description in the trained form (its accuracy is tests/e2e/demo.rs's business).
    assert!(
        m[1].text.trim_start().starts_with("There "),
        "{:?}",
        m[1].text
    );

    // The demo counts as a recent model; only another model stops it loading at start.
    assert_eq!(app(&h).settings.recent_models[0].path, demo);
}
