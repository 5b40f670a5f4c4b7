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
use crate::metrics::{EncodeTimes, ms_since};
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

struct Vision<B: Backend> {
    tower: VisionTower<B>,
    projector: Projector<B>,
    spec: VisionSpec,
}

pub struct Vlm<B: Backend> {
    be: B,
    decoder: Box<dyn Decoder<B>>,
    vision: Option<Vision<B>>,
    images: HashMap<ImageId, B::Tensor>,
    next_image: u64,
    /// Input rows of the current chunk.
    x: B::Tensor,
    context_len: usize,
    last_encode: Option<EncodeTimes>,
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
        let llm_w = WeightLoader::new(src, &be).with_quant(quant.llm);
        let decoder = load_decoder(&be, &spec.llm, &llm_w, context_len)?;
        let vision = match &spec.vision {
            None => None,
            Some(vs) => {
                let (tower_ckpt, prefix) = tower_source(src, vs)?;
                let tower_src: &dyn TensorSource = match &tower_ckpt {
                    Some(c) => c,
                    None => src,
                };
                let tower_w = WeightLoader::new(tower_src, &be)
                    .with_quant(quant.vision)
                    .pp_opt(&prefix);
                let tower = VisionTower::load(
                    be.clone(),
                    vs.tower.clone(),
                    &tower_w,
                    vs.layers_to_run,
                    vs.drop_cls,
                )?;
                let proj_w = WeightLoader::new(src, &be)
                    .with_quant(quant.vision)
                    .pp("model.mm_projector");
                let projector = Projector::load(
                    &proj_w,
                    vs.projector,
                    vs.tower.hidden_size,
                    spec.llm.hidden_size,
                )?;
                Some(Vision {
                    tower,
                    projector,
                    spec: vs.clone(),
                })
            }
        };
        let x = be.tensor(PREFILL_CHUNK, spec.llm.hidden_size);
        Ok(Vlm {
            be,
            decoder,
            vision,
            images: HashMap::new(),
            next_image: 0,
            x,
            context_len,
            last_encode: None,
        })
    }

    fn vision(&self) -> Result<&Vision<B>> {
        self.vision.as_ref().ok_or_else(|| {
            Error::InvalidArgument("this model has no vision tower: it cannot take images".into())
        })
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
                    if rows.end > self.be.rows(img) {
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
    fn run_chunk(&mut self, chunk: &[Segment], pos: usize) -> usize {
        let n: usize = chunk.iter().map(Segment::len).sum();
        self.be.set_rows(&mut self.x, n);
        let mut row = 0;
        for seg in chunk {
            match seg {
                Segment::Tokens(t) => self.decoder.embed(t, &mut self.x, row),
                Segment::Image { id, rows } => {
                    let img = &self.images[id];
                    self.be
                        .copy_rows(img, rows.start, rows.len(), &mut self.x, row);
                }
            }
            row += seg.len();
        }
        self.decoder.forward(&mut self.x, pos);
        n
    }
}

impl<B: Backend> Model for Vlm<B> {
    fn llm_config(&self) -> &LlmConfig {
        self.decoder.config()
    }

    fn image_tokens(&self) -> Option<usize> {
        self.vision.as_ref().map(|v| v.spec.image_tokens())
    }

    fn image_size(&self) -> Option<usize> {
        self.vision.as_ref().map(|v| v.spec.tower.image_size)
    }

    fn encode_image(&mut self, pixels: &[f32]) -> Result<ImageId> {
        let v = self.vision()?;
        let start = Instant::now();
        let features = v.tower.forward(pixels)?;
        let vision_ms = ms_since(start);
        let start = Instant::now();
        let side = v.spec.tower.grid_side();
        let rows =
            v.projector
                .forward(&self.be, &features, side, self.decoder.config().hidden_size)?;
        self.last_encode = Some(EncodeTimes {
            vision_ms,
            projector_ms: ms_since(start),
        });
        let id = ImageId(self.next_image);
        self.next_image += 1;
        self.images.insert(id, rows);
        Ok(id)
    }

    fn last_encode_times(&self) -> Option<EncodeTimes> {
        self.last_encode
    }

    fn vision_features(&mut self, pixels: &[f32]) -> Result<Vec<f32>> {
        let features = self.vision()?.tower.forward(pixels)?;
        Ok(self.be.read(&features))
    }

    fn image_embeddings(&self, id: ImageId) -> Result<Vec<f32>> {
        self.images
            .get(&id)
            .map(|t| self.be.read(t))
            .ok_or_else(|| Error::InvalidArgument(format!("image {id:?} is not encoded")))
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
            let n = self.run_chunk(chunk, pos);
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
            n = self.run_chunk(chunk, pos);
            pos += n;
        }
        let logits = self.decoder.logits(&self.x, n - 1, 1);
        Ok(self.be.argmax(logits)[0])
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn weight_bytes(&self) -> usize {
        self.decoder.weight_bytes() + self.vision.as_ref().map_or(0, |v| v.tower.weight_bytes())
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
}
