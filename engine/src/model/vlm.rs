//! The driver behind [`Model`]: a language model, optionally with a vision tower and a
//! projector. Input sequences mix token runs and image embedding rows; they are laid into
//! one activation buffer chunk by chunk, so an image's rows occupy ordinary positions, as
//! in LLaVA's `prepare_inputs_labels_for_multimodal`.

use std::collections::HashMap;
use std::time::Instant;

use super::llm::{Decoder, PREFILL_CHUNK, load_decoder};
use super::projector::Projector;
use super::spec::{ModelSpec, VisionSpec};
use super::vision::VisionTower;
use super::{ImageId, Logits, Model, Segment, WeightLoader};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::load::safetensors::Checkpoint;
use crate::load::source::TensorSource;
use crate::metrics::{EncodeTimes, ms_between};
use crate::model::config::LlmConfig;
use crate::tensor::DType;

/// Storage formats for the weight matrices, by role (quantise-on-load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuantPolicy {
    /// The language model's linear layers, embeddings and head.
    pub llm: Option<DType>,
    /// The vision tower's and projector's linear layers (not the patch embedding).
    pub vision: Option<DType>,
}

/// The vision tower and projector, with their own backend handle so the pair can move to a
/// vision thread.
struct Vision<B: Backend> {
    be: B,
    tower: VisionTower<B>,
    projector: Projector<B>,
    spec: VisionSpec,
    /// The language model's width.
    hidden: usize,
}

/// When one batch of an image's vision passes ran, and how long each part took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncodeSpan {
    pub image: ImageId,
    /// The batch: passes `first..first + count` of the image (tiles, then the thumbnail).
    pub first: usize,
    pub count: usize,
    pub start: Instant,
    /// The tower finished; the projector ran from here to `end`.
    pub vision_end: Instant,
    pub end: Instant,
}

impl<B: Backend> Vision<B> {
    fn weight_bytes(&self) -> usize {
        self.tower.weight_bytes() + self.projector.weight_bytes(&self.be)
    }

    /// Runs a batch of passes through the tower and the projector.
    fn encode(
        &self,
        image: ImageId,
        first: usize,
        passes: &[&[f32]],
    ) -> Result<(B::Tensor, EncodeSpan)> {
        let start = Instant::now();
        let features = self.tower.forward_batch(passes)?;
        self.be.sync();
        let vision_end = Instant::now();
        let side = self.spec.tower.grid_side();
        let rows =
            self.projector
                .forward_tiles(&self.be, &features, side, passes.len(), self.hidden)?;
        // Make the times honest on backends that only record work: the rows exist now.
        self.be.sync();
        let span = EncodeSpan {
            image,
            first,
            count: passes.len(),
            start,
            vision_end,
            end: Instant::now(),
        };
        Ok((rows, span))
    }
}

/// A request to the vision thread.
enum Job {
    Encode {
        image: ImageId,
        passes: Vec<Vec<f32>>,
    },
    /// The tower's selected-layer features of one image, read back.
    Features {
        pixels: Vec<f32>,
        reply: crossbeam_channel::Sender<Result<Vec<f32>>>,
    },
}

/// A batch the vision thread finished.
struct Done<B: Backend> {
    image: ImageId,
    first: usize,
    result: Result<(B::Tensor, EncodeSpan)>,
}

/// Where vision passes run.
enum Runner<B: Backend> {
    /// On the caller's thread, batch by batch when rows are first needed (so prefill
    /// interleaves with encoding).
    Inline(Vision<B>),
    /// On a vision thread that owns the tower: encoding overlaps whatever the engine thread
    /// does meanwhile (the prefill of text and of tiles already done, or the user typing).
    Thread(VisionThread<B>),
}

struct VisionThread<B: Backend> {
    jobs: crossbeam_channel::Sender<Job>,
    done: crossbeam_channel::Receiver<Done<B>>,
    thread: Option<std::thread::JoinHandle<()>>,
    spec: VisionSpec,
}

impl<B: Backend> Runner<B> {
    fn spec(&self) -> &VisionSpec {
        match self {
            Runner::Inline(v) => &v.spec,
            Runner::Thread(t) => &t.spec,
        }
    }
}

impl<B: Backend> Drop for VisionThread<B> {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after its current batch.
        let (closed, _) = crossbeam_channel::unbounded();
        self.jobs = closed;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An image's embedding rows: `passes × per_pass` rows, filled batch by batch.
struct ImageRows<B: Backend> {
    per_pass: usize,
    passes: usize,
    /// Encoded batches: first pass, pass count, rows.
    batches: Vec<(usize, usize, B::Tensor)>,
    /// Passes encoded so far (batches arrive in order).
    ready: usize,
    /// Inline runner: the pixels of the passes not yet encoded (from `ready` on).
    pending: Vec<Vec<f32>>,
    /// A failure of the vision thread for this image.
    error: Option<String>,
    times: EncodeTimes,
}

impl<B: Backend> ImageRows<B> {
    fn rows(&self) -> usize {
        self.passes * self.per_pass
    }
}

pub struct Vlm<B: Backend> {
    be: B,
    decoder: Box<dyn Decoder<B>>,
    vision: Option<Runner<B>>,
    images: HashMap<ImageId, ImageRows<B>>,
    next_image: u64,
    /// Input rows of the current chunk.
    x: B::Tensor,
    context_len: usize,
    last_encode: Option<EncodeTimes>,
    spans: Vec<EncodeSpan>,
    /// Bytes of the vision tower and projector (they may live on the vision thread).
    vision_bytes: usize,
    /// The vision tower's backend when it is not `be` ([`Vlm::load_split`]).
    vision_backend: Option<String>,
}

/// Opens the tower's weights: the main checkpoint when it carries them, else the tower's
/// own directory (transformers 4 saves its `vision_model.` prefix, transformers 5 none).
fn tower_source(src: &dyn TensorSource, spec: &VisionSpec) -> Result<(Option<Checkpoint>, String)> {
    let probe = "embeddings.patch_embedding.weight";
    if src.contains(&format!("{}.{probe}", spec.weights.prefix)) {
        return Ok((None, spec.weights.prefix.clone()));
    }
    let Some(dir) = &spec.weights.dir else {
        return Err(Error::MissingTensor {
            path: src.location().to_path_buf(),
            name: format!(
                "{}.{probe} (the vision tower is not in this checkpoint and no local tower directory was found)",
                spec.weights.prefix
            ),
        });
    };
    let tower = Checkpoint::open(dir)?;
    let prefix = if tower.contains(&format!("vision_model.{probe}")) {
        "vision_model"
    } else {
        ""
    };
    Ok((Some(tower), prefix.to_string()))
}

/// The decoder on `be`; the vision tower and projector (if any) on `vision_be`, with their
/// weight bytes.
type Parts<B, V> = (Box<dyn Decoder<B>>, Option<Vision<V>>, usize);

fn load_parts<B: Backend, V: Backend>(
    be: &B,
    vision_be: &V,
    spec: &ModelSpec,
    src: &dyn TensorSource,
    quant: QuantPolicy,
    context_len: usize,
) -> Result<Parts<B, V>> {
    let llm_w = WeightLoader::new(src, be).with_quant(quant.llm);
    let decoder = load_decoder(be, &spec.llm, &llm_w, context_len)?;
    let vision = load_vision(vision_be, spec, src, quant.vision)?;
    let bytes = vision.as_ref().map_or(0, Vision::weight_bytes);
    Ok((decoder, vision, bytes))
}

/// Loads the vision tower and projector of `spec` (if it has them) onto `be`.
fn load_vision<V: Backend>(
    be: &V,
    spec: &ModelSpec,
    src: &dyn TensorSource,
    quant: Option<DType>,
) -> Result<Option<Vision<V>>> {
    let Some(vs) = &spec.vision else {
        return Ok(None);
    };
    let (tower_ckpt, prefix) = tower_source(src, vs)?;
    let tower_src: &dyn TensorSource = match &tower_ckpt {
        Some(c) => c,
        None => src,
    };
    let tower_w = WeightLoader::new(tower_src, be)
        .with_quant(quant)
        .pp_opt(&prefix);
    let tower = VisionTower::load(
        be.clone(),
        vs.tower.clone(),
        &tower_w,
        vs.layers_to_run,
        vs.drop_cls,
    )?;
    let proj_w = WeightLoader::new(src, be)
        .with_quant(quant)
        .pp("model.mm_projector");
    let projector = Projector::load(
        &proj_w,
        vs.projector,
        vs.tower.hidden_size,
        spec.llm.hidden_size,
    )?;
    Ok(Some(Vision {
        be: be.clone(),
        tower,
        projector,
        spec: vs.clone(),
        hidden: spec.llm.hidden_size,
    }))
}

/// Starts the vision thread that owns `vision`. Each batch's rows go through `to_llm`
/// before they are handed over: nothing when the tower shares the language model's
/// backend, a read-back and an upload when it runs on another.
fn spawn_vision_thread<V: Backend, B: Backend>(
    vision: Vision<V>,
    to_llm: impl Fn(&V, V::Tensor) -> B::Tensor + Send + 'static,
) -> Result<VisionThread<B>> {
    let spec = vision.spec.clone();
    let (jobs, job_rx) = crossbeam_channel::unbounded::<Job>();
    let (done_tx, done) = crossbeam_channel::unbounded::<Done<B>>();
    let batch = spec.vision_batch.max(1);
    let thread = std::thread::Builder::new()
        .name("pocketvlm-vision".into())
        .spawn(move || {
            while let Ok(job) = job_rx.recv() {
                let (image, passes) = match job {
                    Job::Encode { image, passes } => (image, passes),
                    Job::Features { pixels, reply } => {
                        let f = vision.tower.forward(&pixels).map(|t| vision.be.read(&t));
                        let _ = reply.send(f);
                        continue;
                    }
                };
                for (b, group) in passes.chunks(batch).enumerate() {
                    let refs: Vec<&[f32]> = group.iter().map(Vec::as_slice).collect();
                    let first = b * batch;
                    let result = vision.encode(image, first, &refs).map(|(rows, mut span)| {
                        let rows = to_llm(&vision.be, rows);
                        // The rows are usable from here (the transfer counts as projector time).
                        span.end = Instant::now();
                        (rows, span)
                    });
                    let failed = result.is_err();
                    if done_tx
                        .send(Done {
                            image,
                            first,
                            result,
                        })
                        .is_err()
                        || failed
                    {
                        break;
                    }
                }
            }
        })
        .map_err(|e| Error::EngineStopped(format!("cannot start the vision thread: {e}")))?;
    Ok(VisionThread {
        jobs,
        done,
        thread: Some(thread),
        spec,
    })
}

impl<B: Backend> Vlm<B> {
    /// Loads the model from `src`; matrices of the language model are stored as
    /// `quant.llm`, those of the vision tower and projector as `quant.vision` (`None`: as in
    /// the file).
    pub fn load(
        be: B,
        spec: &ModelSpec,
        src: &dyn TensorSource,
        quant: QuantPolicy,
        context_len: usize,
    ) -> Result<Self> {
        let (decoder, vision, vision_bytes) = load_parts(&be, &be, spec, src, quant, context_len)?;
        Ok(Self::assemble(
            be,
            decoder,
            vision.map(Runner::Inline),
            vision_bytes,
            spec,
            context_len,
        ))
    }

    /// Loads the language model on `be` and the vision tower and projector on another
    /// backend, `vision_be` (the GPU beside a CPU language model, or the reverse). The tower
    /// runs on a vision thread of its own; each finished batch of rows is read back and
    /// uploaded to `be`, so the prefill of the first tiles on one backend overlaps the
    /// encoding of later tiles on the other.
    pub fn load_split<V: Backend>(
        be: B,
        vision_be: V,
        spec: &ModelSpec,
        src: &dyn TensorSource,
        quant: QuantPolicy,
        context_len: usize,
    ) -> Result<Self> {
        let (decoder, vision, vision_bytes) =
            load_parts(&be, &vision_be, spec, src, quant, context_len)?;
        let runner = match vision {
            None => None,
            Some(v) => {
                let llm = be.clone();
                let to_llm = move |from: &V, rows: V::Tensor| {
                    let host = from.read(&rows);
                    let mut t = llm.tensor(from.rows(&rows), from.cols(&rows));
                    llm.write(&mut t, &host);
                    t
                };
                Some(Runner::Thread(spawn_vision_thread(v, to_llm)?))
            }
        };
        let mut vlm = Self::assemble(be, decoder, runner, vision_bytes, spec, context_len);
        vlm.vision_backend = Some(vision_be.name());
        Ok(vlm)
    }

    fn assemble(
        be: B,
        decoder: Box<dyn Decoder<B>>,
        vision: Option<Runner<B>>,
        vision_bytes: usize,
        spec: &ModelSpec,
        context_len: usize,
    ) -> Self {
        let x = be.tensor(PREFILL_CHUNK, spec.llm.hidden_size);
        Vlm {
            be,
            decoder,
            vision,
            images: HashMap::new(),
            next_image: 0,
            x,
            context_len,
            last_encode: None,
            spans: Vec::new(),
            vision_bytes,
            vision_backend: None,
        }
    }

    fn no_vision() -> Error {
        Error::InvalidArgument("this model has no vision tower: it cannot take images".into())
    }

    /// Moves the vision tower to a thread of its own: images passed to
    /// [`Model::begin_image`] are then encoded while this thread goes on (prefilling text,
    /// or idle while the user types). On a backend whose ops may be issued from two threads
    /// at once (the CPU's). Without this, passes are encoded inline when first needed.
    pub fn run_vision_on_thread(&mut self) -> Result<()> {
        let vision = match self.vision.take() {
            Some(Runner::Inline(v)) => v,
            other => {
                // No tower, or already on its thread.
                self.vision = other;
                return Ok(());
            }
        };
        self.vision = Some(Runner::Thread(spawn_vision_thread(
            vision,
            |_: &B, rows| rows,
        )?));
        Ok(())
    }

    /// Files a finished batch from the vision thread.
    fn file(&mut self, d: Done<B>) {
        let Some(img) = self.images.get_mut(&d.image) else {
            return; // released meanwhile
        };
        match d.result {
            Ok((rows, span)) => {
                img.ready = img.ready.max(d.first + span.count);
                img.times.vision_ms += ms_between(span.start, span.vision_end);
                img.times.projector_ms += ms_between(span.vision_end, span.end);
                img.batches.push((d.first, span.count, rows));
                self.spans.push(span);
            }
            Err(e) => img.error = Some(e.to_string()),
        }
    }

    /// Collects what the vision thread has finished, without waiting.
    fn collect_done(&mut self) {
        let mut finished = Vec::new();
        if let Some(Runner::Thread(t)) = &self.vision {
            while let Ok(d) = t.done.try_recv() {
                finished.push(d);
            }
        }
        for d in finished {
            self.file(d);
        }
    }

    /// Makes the first `rows` embedding rows of `id` available: waits for the vision thread,
    /// or encodes the missing passes here.
    fn ensure_rows(&mut self, id: ImageId, rows: usize) -> Result<()> {
        loop {
            let img = self
                .images
                .get(&id)
                .ok_or_else(|| Error::InvalidArgument(format!("image {id:?} is not encoded")))?;
            if let Some(e) = &img.error {
                return Err(Error::InvalidArgument(format!(
                    "encoding image {id:?} failed: {e}"
                )));
            }
            let needed = rows.div_ceil(img.per_pass).min(img.passes);
            if img.ready >= needed {
                return Ok(());
            }
            match self.vision.as_ref() {
                None => return Err(Self::no_vision()),
                Some(Runner::Thread(t)) => {
                    let d = t
                        .done
                        .recv()
                        .map_err(|_| Error::EngineStopped("the vision thread stopped".into()))?;
                    self.file(d);
                }
                Some(Runner::Inline(v)) => {
                    let batch = v.spec.vision_batch.max(1);
                    let img = self.images.get_mut(&id).ok_or_else(Self::no_vision)?;
                    let first = img.ready;
                    let take = batch.min(img.pending.len());
                    let group: Vec<Vec<f32>> = img.pending.drain(..take).collect();
                    let refs: Vec<&[f32]> = group.iter().map(Vec::as_slice).collect();
                    let (tensor, span) = v.encode(id, first, &refs)?;
                    let img = self.images.get_mut(&id).ok_or_else(Self::no_vision)?;
                    img.ready = first + take;
                    img.times.vision_ms += ms_between(span.start, span.vision_end);
                    img.times.projector_ms += ms_between(span.vision_end, span.end);
                    img.batches.push((first, take, tensor));
                    self.spans.push(span);
                }
            }
        }
    }

    /// Copies rows `rows` of image `id` into `x` at `row0` (the rows are ready).
    fn copy_image_rows(&mut self, id: ImageId, rows: std::ops::Range<usize>, row0: usize) {
        let Some(img) = self.images.get(&id) else {
            return;
        };
        for (first, count, t) in &img.batches {
            let (lo, hi) = (first * img.per_pass, (first + count) * img.per_pass);
            let (a, b) = (rows.start.max(lo), rows.end.min(hi));
            if a < b {
                self.be
                    .copy_rows(t, a - lo, b - a, &mut self.x, row0 + (a - rows.start));
            }
        }
    }

    /// Checks every segment before anything runs.
    fn validate(&self, input: &[Segment], pos0: usize) -> Result<usize> {
        let vocab = self.decoder.config().vocab_size;
        let mut n = 0;
        for seg in input {
            match seg {
                Segment::Tokens(t) => {
                    if let Some(&bad) = t.iter().find(|&&t| t as usize >= vocab) {
                        return Err(Error::InvalidArgument(format!(
                            "token id {bad} is outside the model's vocabulary of {vocab}"
                        )));
                    }
                }
                Segment::Image { id, rows } => {
                    let img = self.images.get(id).ok_or_else(|| {
                        Error::InvalidArgument(format!("image {id:?} is not encoded"))
                    })?;
                    if rows.end > img.rows() {
                        return Err(Error::InvalidArgument("image rows out of range".into()));
                    }
                }
            }
            n += seg.len();
        }
        if n == 0 {
            return Err(Error::InvalidArgument("forward of zero positions".into()));
        }
        if pos0 + n > self.context_len {
            return Err(Error::ContextOverflow {
                prompt: pos0 + n,
                context: self.context_len,
            });
        }
        Ok(n)
    }
}

impl<B: Backend> Vlm<B> {
    /// Lays one chunk's tokens and image rows into `x` and runs it through the decoder at
    /// positions `pos..`; returns its row count.
    fn run_chunk(&mut self, chunk: &[Segment], pos: usize) -> Result<usize> {
        // Image rows first: this may wait for (or run) the vision passes they come from.
        for seg in chunk {
            if let Segment::Image { id, rows } = seg {
                self.ensure_rows(*id, rows.end)?;
            }
        }
        let n: usize = chunk.iter().map(Segment::len).sum();
        self.be.set_rows(&mut self.x, n);
        let mut row = 0;
        for seg in chunk {
            match seg {
                Segment::Tokens(t) => self.decoder.embed(t, &mut self.x, row),
                Segment::Image { id, rows } => self.copy_image_rows(*id, rows.clone(), row),
            }
            row += seg.len();
        }
        self.decoder.forward(&mut self.x, pos);
        Ok(n)
    }
}

impl<B: Backend> Model for Vlm<B> {
    fn llm_config(&self) -> &LlmConfig {
        self.decoder.config()
    }

    fn image_tokens(&self) -> Option<usize> {
        self.vision.as_ref().map(|v| v.spec().image_tokens())
    }

    fn image_size(&self) -> Option<usize> {
        self.vision.as_ref().map(|v| v.spec().tower.image_size)
    }

    fn encode_image(&mut self, pixels: &[f32]) -> Result<ImageId> {
        let id = self.begin_image(vec![pixels.to_vec()])?;
        let waited = self.wait_image(id);
        if let Err(e) = waited {
            self.release_image(id);
            return Err(e);
        }
        self.last_encode = self.images.get(&id).map(|i| i.times);
        Ok(id)
    }

    fn begin_image(&mut self, passes: Vec<Vec<f32>>) -> Result<ImageId> {
        let vision = self.vision.as_ref().ok_or_else(Self::no_vision)?;
        let spec = vision.spec();
        let side = spec.tower.image_size;
        if passes.is_empty() {
            return Err(Error::InvalidArgument(
                "an image needs at least one pass".into(),
            ));
        }
        if let Some(p) = passes.iter().find(|p| p.len() != 3 * side * side) {
            return Err(Error::InvalidArgument(format!(
                "the vision tower takes 3×{side}×{side} pixels, got {} values",
                p.len()
            )));
        }
        let id = ImageId(self.next_image);
        self.next_image += 1;
        let mut img = ImageRows {
            per_pass: spec.image_tokens(),
            passes: passes.len(),
            batches: Vec::new(),
            ready: 0,
            pending: Vec::new(),
            error: None,
            times: EncodeTimes::default(),
        };
        match vision {
            Runner::Inline(_) => img.pending = passes,
            Runner::Thread(t) => t
                .jobs
                .send(Job::Encode { image: id, passes })
                .map_err(|_| Error::EngineStopped("the vision thread stopped".into()))?,
        }
        self.images.insert(id, img);
        Ok(id)
    }

    fn wait_image(&mut self, id: ImageId) -> Result<()> {
        let rows = self
            .images
            .get(&id)
            .map(ImageRows::rows)
            .ok_or_else(|| Error::InvalidArgument(format!("image {id:?} is not encoded")))?;
        self.ensure_rows(id, rows)
    }

    fn image_rows(&self, id: ImageId) -> Option<usize> {
        self.images.get(&id).map(ImageRows::rows)
    }

    fn image_times(&mut self, id: ImageId) -> Option<(EncodeTimes, bool)> {
        self.collect_done();
        self.images.get(&id).map(|i| (i.times, i.ready == i.passes))
    }

    fn take_encode_spans(&mut self) -> Vec<EncodeSpan> {
        self.collect_done();
        std::mem::take(&mut self.spans)
    }

    fn last_encode_times(&self) -> Option<EncodeTimes> {
        self.last_encode
    }

    fn vision_features(&mut self, pixels: &[f32]) -> Result<Vec<f32>> {
        match &self.vision {
            None => Err(Self::no_vision()),
            Some(Runner::Inline(v)) => {
                let features = v.tower.forward(pixels)?;
                Ok(self.be.read(&features))
            }
            Some(Runner::Thread(t)) => {
                let (reply, answer) = crossbeam_channel::bounded(1);
                let stopped = || Error::EngineStopped("the vision thread stopped".into());
                t.jobs
                    .send(Job::Features {
                        pixels: pixels.to_vec(),
                        reply,
                    })
                    .map_err(|_| stopped())?;
                answer.recv().map_err(|_| stopped())?
            }
        }
    }

    fn image_embeddings(&self, id: ImageId) -> Result<Vec<f32>> {
        let img = self
            .images
            .get(&id)
            .ok_or_else(|| Error::InvalidArgument(format!("image {id:?} is not encoded")))?;
        if img.ready < img.passes {
            return Err(Error::InvalidArgument(format!(
                "image {id:?} is still being encoded"
            )));
        }
        let mut batches: Vec<&(usize, usize, B::Tensor)> = img.batches.iter().collect();
        batches.sort_by_key(|b| b.0);
        let mut out = Vec::with_capacity(img.rows() * self.decoder.config().hidden_size);
        for (_, _, t) in batches {
            out.extend(self.be.read(t));
        }
        Ok(out)
    }

    fn release_image(&mut self, id: ImageId) {
        self.images.remove(&id);
    }

    fn forward(&mut self, input: &[Segment], pos0: usize, logits: Logits) -> Result<Vec<f32>> {
        self.validate(input, pos0)?;
        let chunks = super::split_segments(input, PREFILL_CHUNK);
        let mut out = Vec::new();
        let mut pos = pos0;
        for (i, chunk) in chunks.iter().enumerate() {
            let n = self.run_chunk(chunk, pos)?;
            pos += n;
            match logits {
                Logits::All => out.extend(self.be.read(self.decoder.logits(&self.x, 0, n))),
                Logits::Last if i + 1 == chunks.len() => {
                    out = self.be.read(self.decoder.logits(&self.x, n - 1, 1))
                }
                Logits::Last => {}
            }
        }
        Ok(out)
    }

    fn forward_argmax(&mut self, input: &[Segment], pos0: usize) -> Result<u32> {
        self.validate(input, pos0)?;
        let chunks = super::split_segments(input, PREFILL_CHUNK);
        let mut pos = pos0;
        let mut n = 0;
        for chunk in &chunks {
            n = self.run_chunk(chunk, pos)?;
            pos += n;
        }
        let logits = self.decoder.logits(&self.x, n - 1, 1);
        Ok(self.be.argmax(logits)[0])
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn weight_bytes(&self) -> usize {
        self.decoder.weight_bytes() + self.vision_bytes
    }

    fn kv_bytes(&self) -> usize {
        self.decoder.kv_bytes()
    }

    fn decode_weight_bytes(&self) -> usize {
        self.decoder.decode_weight_bytes()
    }

    fn backend_name(&self) -> String {
        self.be.name()
    }

    fn vision_backend_name(&self) -> Option<String> {
        self.vision_backend.clone()
    }
}
