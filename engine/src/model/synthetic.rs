//! Synthetic models: random weights with the exact shapes of real checkpoints, generated in
//! memory (no files) directly in the requested storage format. They drive `pocketvlm
//! bench --synthetic NAME` for models whose weights are not on this machine, and can be
//! written out as a llama GGUF so that llama.cpp runs the same shapes.
//!
//! Weights are uniform noise scaled so that activations stay finite through every layer
//! (norm weights are one, biases zero); the numbers mean nothing, the memory traffic and
//! arithmetic are those of the real model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;

use super::config::{
    LlmArch, LlmConfig, ProjectorKind, RopeConfig, RopeScaling, RopeStyle, VisionConfig, VisionKind,
};
use super::spec::{
    Family, ImagePlaceholder, ModelSpec, ProcessorSpec, PromptTemplate, Resize, TowerWeights,
    VisionSpec,
};
use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::load::source::TensorSource;
use crate::quant::QK;
use crate::tensor::{DType, HostTensor, Storage};

/// The models `--synthetic` knows.
pub const NAMES: [&str; 5] = [
    "mobilevlm-v2-1.7b",
    "mobilevlm-v2-3b",
    "imp-v1-3b",
    "imp-v1.5-2b-qwen",
    "smollm2-135m",
];

const TOWER: &str = "model.vision_tower.vision_tower.vision_model";

#[allow(clippy::too_many_arguments)]
fn llm(
    arch: LlmArch,
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    vocab: usize,
    rotary_factor: f32,
    theta: f32,
    ctx: usize,
) -> LlmConfig {
    let head_dim = hidden / heads;
    let phi2 = arch == LlmArch::Phi2;
    LlmConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        max_position_embeddings: ctx,
        norm_eps: 1e-5,
        rope: RopeConfig {
            theta,
            rotary_dim: (head_dim as f32 * rotary_factor) as usize,
            scaling: RopeScaling::None,
            style: RopeStyle::NeoX,
        },
        activation: if phi2 {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        tie_word_embeddings: false,
        qkv_bias: arch == LlmArch::Qwen2 || phi2,
        o_bias: phi2,
        mlp_bias: phi2,
        lm_head_bias: phi2,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        dtype: None,
    }
}

fn clip_l336() -> VisionConfig {
    VisionConfig {
        kind: VisionKind::Clip,
        hidden_size: 1024,
        intermediate_size: 4096,
        num_layers: 24,
        num_heads: 16,
        image_size: 336,
        patch_size: 14,
        norm_eps: 1e-5,
        activation: Activation::QuickGelu,
    }
}

fn siglip_so400m() -> VisionConfig {
    VisionConfig {
        kind: VisionKind::Siglip,
        hidden_size: 1152,
        intermediate_size: 4304,
        num_layers: 27,
        num_heads: 16,
        image_size: 384,
        patch_size: 14,
        norm_eps: 1e-6,
        activation: Activation::GeluTanh,
    }
}

fn vision(tower: VisionConfig, projector: ProjectorKind) -> VisionSpec {
    let clip = tower.kind == VisionKind::Clip;
    let (mean, std) = if clip {
        (crate::image::CLIP_MEAN, crate::image::CLIP_STD)
    } else {
        (crate::image::SIGLIP_MEAN, crate::image::SIGLIP_STD)
    };
    VisionSpec {
        // One image, one pass: the synthetic families do not tile.
        tiling: None,
        vision_batch: 1,
        // mm_vision_select_layer = -2 in both families.
        layers_to_run: tower.num_layers - 1,
        drop_cls: true,
        projector,
        weights: TowerWeights {
            prefix: TOWER.into(),
            dir: None,
        },
        processor: ProcessorSpec {
            size: tower.image_size,
            resize: if clip {
                Resize::ShortestEdgeThenCrop
            } else {
                Resize::Squash
            },
            pad_fill: None,
            mean,
            std,
        },
        placeholder: ImagePlaceholder::Sentinel,
        tower,
    }
}

/// The spec of a synthetic model by name.
pub fn spec(name: &str) -> Result<ModelSpec> {
    let unknown = || {
        Error::InvalidArgument(format!(
            "unknown synthetic model `{name}` (known: {})",
            NAMES.join(", ")
        ))
    };
    Ok(match name {
        "mobilevlm-v2-1.7b" => ModelSpec {
            family: Family::MobileVlmV2,
            llm: llm(
                LlmArch::Llama,
                24,
                2048,
                16,
                16,
                5632,
                32000,
                1.0,
                10000.0,
                2048,
            ),
            vision: Some(vision(clip_l336(), ProjectorKind::Ldpv2)),
            template: PromptTemplate::VicunaV1,
        },
        "mobilevlm-v2-3b" => ModelSpec {
            family: Family::MobileVlmV2,
            llm: llm(
                LlmArch::Llama,
                32,
                2560,
                32,
                32,
                6912,
                32000,
                1.0,
                10000.0,
                2048,
            ),
            vision: Some(vision(clip_l336(), ProjectorKind::Ldpv2)),
            template: PromptTemplate::VicunaV1,
        },
        "imp-v1-3b" => ModelSpec {
            family: Family::ImpPhi2,
            llm: llm(
                LlmArch::Phi2,
                32,
                2560,
                32,
                32,
                10240,
                51200,
                0.4,
                10000.0,
                2048,
            ),
            vision: Some(vision(siglip_so400m(), ProjectorKind::Mlp2xGelu)),
            template: PromptTemplate::VicunaV1,
        },
        "imp-v1.5-2b-qwen" => ModelSpec {
            family: Family::ImpQwen2,
            llm: llm(
                LlmArch::Qwen2,
                24,
                2048,
                16,
                16,
                5504,
                151936,
                1.0,
                1_000_000.0,
                4096,
            ),
            vision: Some(vision(siglip_so400m(), ProjectorKind::Mlp2xGelu)),
            template: PromptTemplate::ImpQwen2,
        },
        "smollm2-135m" => {
            let mut cfg = llm(
                LlmArch::Llama,
                30,
                576,
                9,
                3,
                1536,
                49152,
                1.0,
                100000.0,
                8192,
            );
            cfg.tie_word_embeddings = true;
            ModelSpec {
                family: Family::TextOnly,
                llm: cfg,
                vision: None,
                template: PromptTemplate::Jinja,
            }
        }
        _ => return Err(unknown()),
    })
}

/// What a synthetic tensor is: a matrix of a role (stored in that role's format), or a
/// small tensor kept in f32 (norms, biases, embeddings added once).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    LlmMatrix,
    VisionMatrix,
    /// The patch embedding: f16, as the real towers ship it.
    Patch,
    Ones,
    Zeros,
    /// Small random f32 (position/class embeddings, conv kernels).
    SmallF32,
}

/// Random weights by Hugging Face name, generated when the model asks for them.
pub struct SyntheticSource {
    tensors: BTreeMap<String, (Vec<usize>, Kind)>,
    llm_dtype: DType,
    vision_dtype: DType,
    seed: u64,
}

impl SyntheticSource {
    /// Every tensor `spec` loads, with LLM matrices in `llm_dtype` and vision/projector
    /// matrices in `vision_dtype` (rows that are not whole blocks stay f16).
    pub fn new(spec: &ModelSpec, llm_dtype: DType, vision_dtype: DType) -> Self {
        let mut t = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>, kind: Kind| {
            t.insert(name, (shape, kind));
        };
        let c = &spec.llm;
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        add(
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, h],
            Kind::LlmMatrix,
        );
        let phi2 = c.arch == LlmArch::Phi2;
        for i in 0..c.num_layers {
            let l = format!("model.layers.{i}");
            let a = format!("{l}.self_attn");
            add(format!("{l}.input_layernorm.weight"), vec![h], Kind::Ones);
            if phi2 {
                add(format!("{l}.input_layernorm.bias"), vec![h], Kind::Zeros);
            } else {
                add(
                    format!("{l}.post_attention_layernorm.weight"),
                    vec![h],
                    Kind::Ones,
                );
            }
            for (p, n) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                add(format!("{a}.{p}.weight"), vec![n, h], Kind::LlmMatrix);
                if c.qkv_bias {
                    add(format!("{a}.{p}.bias"), vec![n], Kind::Zeros);
                }
            }
            let o = if phi2 { "dense" } else { "o_proj" };
            add(format!("{a}.{o}.weight"), vec![h, q], Kind::LlmMatrix);
            if c.o_bias {
                add(format!("{a}.{o}.bias"), vec![h], Kind::Zeros);
            }
            if phi2 {
                add(
                    format!("{l}.mlp.fc1.weight"),
                    vec![inter, h],
                    Kind::LlmMatrix,
                );
                add(format!("{l}.mlp.fc1.bias"), vec![inter], Kind::Zeros);
                add(
                    format!("{l}.mlp.fc2.weight"),
                    vec![h, inter],
                    Kind::LlmMatrix,
                );
                add(format!("{l}.mlp.fc2.bias"), vec![h], Kind::Zeros);
            } else {
                add(
                    format!("{l}.mlp.gate_proj.weight"),
                    vec![inter, h],
                    Kind::LlmMatrix,
                );
                add(
                    format!("{l}.mlp.up_proj.weight"),
                    vec![inter, h],
                    Kind::LlmMatrix,
                );
                add(
                    format!("{l}.mlp.down_proj.weight"),
                    vec![h, inter],
                    Kind::LlmMatrix,
                );
            }
        }
        if phi2 {
            add("model.final_layernorm.weight".into(), vec![h], Kind::Ones);
            add("model.final_layernorm.bias".into(), vec![h], Kind::Zeros);
        } else {
            add("model.norm.weight".into(), vec![h], Kind::Ones);
        }
        if !c.tie_word_embeddings {
            add(
                "lm_head.weight".into(),
                vec![c.vocab_size, h],
                Kind::LlmMatrix,
            );
            if c.lm_head_bias {
                add("lm_head.bias".into(), vec![c.vocab_size], Kind::Zeros);
            }
        }
        if let Some(v) = &spec.vision {
            let tw = &v.tower;
            let (vh, vi, p) = (tw.hidden_size, tw.intermediate_size, tw.patch_size);
            let e = format!("{TOWER}.embeddings");
            add(
                format!("{e}.patch_embedding.weight"),
                vec![vh, 3, p, p],
                Kind::Patch,
            );
            if tw.kind == VisionKind::Clip {
                add(format!("{e}.class_embedding"), vec![vh], Kind::SmallF32);
                add(format!("{TOWER}.pre_layrnorm.weight"), vec![vh], Kind::Ones);
                add(format!("{TOWER}.pre_layrnorm.bias"), vec![vh], Kind::Zeros);
            } else {
                add(format!("{e}.patch_embedding.bias"), vec![vh], Kind::Zeros);
            }
            add(
                format!("{e}.position_embedding.weight"),
                vec![tw.num_positions(), vh],
                Kind::SmallF32,
            );
            for i in 0..v.layers_to_run {
                let l = format!("{TOWER}.encoder.layers.{i}");
                for n in ["layer_norm1", "layer_norm2"] {
                    add(format!("{l}.{n}.weight"), vec![vh], Kind::Ones);
                    add(format!("{l}.{n}.bias"), vec![vh], Kind::Zeros);
                }
                for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(
                        format!("{l}.self_attn.{p}.weight"),
                        vec![vh, vh],
                        Kind::VisionMatrix,
                    );
                    add(format!("{l}.self_attn.{p}.bias"), vec![vh], Kind::Zeros);
                }
                add(
                    format!("{l}.mlp.fc1.weight"),
                    vec![vi, vh],
                    Kind::VisionMatrix,
                );
                add(format!("{l}.mlp.fc1.bias"), vec![vi], Kind::Zeros);
                add(
                    format!("{l}.mlp.fc2.weight"),
                    vec![vh, vi],
                    Kind::VisionMatrix,
                );
                add(format!("{l}.mlp.fc2.bias"), vec![vh], Kind::Zeros);
            }
            let m = "model.mm_projector";
            match v.projector {
                ProjectorKind::Mlp2xGelu => {
                    add(format!("{m}.0.weight"), vec![h, vh], Kind::VisionMatrix);
                    add(format!("{m}.0.bias"), vec![h], Kind::Zeros);
                    add(format!("{m}.2.weight"), vec![h, h], Kind::VisionMatrix);
                    add(format!("{m}.2.bias"), vec![h], Kind::Zeros);
                }
                ProjectorKind::Ldpv2 => {
                    add(
                        format!("{m}.mlp.mlp.0.weight"),
                        vec![h, vh],
                        Kind::VisionMatrix,
                    );
                    add(format!("{m}.mlp.mlp.0.bias"), vec![h], Kind::Zeros);
                    add(
                        format!("{m}.mlp.mlp.2.weight"),
                        vec![h, h],
                        Kind::VisionMatrix,
                    );
                    add(format!("{m}.mlp.mlp.2.bias"), vec![h], Kind::Zeros);
                    add(
                        format!("{m}.peg.peg.0.weight"),
                        vec![h, 1, 3, 3],
                        Kind::SmallF32,
                    );
                    add(format!("{m}.peg.peg.0.bias"), vec![h], Kind::Zeros);
                }
                ProjectorKind::Linear => {
                    add(format!("{m}.weight"), vec![h, vh], Kind::VisionMatrix);
                    add(format!("{m}.bias"), vec![h], Kind::Zeros);
                }
                // No synthetic model uses them (see `NAMES`).
                ProjectorKind::Ldp | ProjectorKind::DownsampleMlp { .. } => {}
            }
        }
        SyntheticSource {
            tensors: t,
            llm_dtype,
            vision_dtype,
            seed: 0x5eed,
        }
    }

    fn dtype_of(&self, shape: &[usize], kind: Kind) -> DType {
        let cols = shape.last().copied().unwrap_or(1);
        let want = match kind {
            Kind::LlmMatrix => self.llm_dtype,
            Kind::VisionMatrix => self.vision_dtype,
            Kind::Patch => DType::F16,
            _ => DType::F32,
        };
        if cols.is_multiple_of(want.block_size()) {
            want
        } else {
            DType::F16
        }
    }

    /// Bytes the model's tensors take in their formats.
    pub fn total_bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|(shape, kind)| {
                let n: usize = shape.iter().product();
                self.dtype_of(shape, *kind).bytes_for(n).unwrap_or(0)
            })
            .sum()
    }

    /// The tensor's bytes in its storage format.
    pub fn generate(&self, name: &str) -> Option<(DType, Vec<usize>, Vec<u8>)> {
        let (shape, kind) = self.tensors.get(name)?;
        let n: usize = shape.iter().product();
        let cols = shape.last().copied().unwrap_or(1);
        let dtype = self.dtype_of(shape, *kind);
        let seed = self.seed ^ fnv(name);
        // Weight spread so that x·W keeps the activations' scale: std ≈ 1/sqrt(fan-in).
        let std = 1.0 / (cols as f32).sqrt();
        let bytes = match kind {
            Kind::Ones => bytemuck::cast_slice(&vec![1.0f32; n]).to_vec(),
            Kind::Zeros => vec![0u8; n * 4],
            Kind::SmallF32 => {
                let v = uniform(n, seed, 0.02);
                bytemuck::cast_slice(&v).to_vec()
            }
            _ => random_weights(dtype, n, seed, std),
        };
        Some((dtype, shape.clone(), bytes))
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

fn uniform(n: usize, seed: u64, a: f32) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    (0..n).map(|_| r.uniform(a)).collect()
}

/// `n` random values of standard deviation ≈ `std`, stored as `dtype` (block formats are
/// filled directly: random nibbles/bytes under a fixed scale).
fn random_weights(dtype: DType, n: usize, seed: u64, std: f32) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let a = std * 3f32.sqrt();
    match dtype {
        DType::F32 => bytemuck::cast_slice(&uniform(n, seed, a)).to_vec(),
        DType::F16 | DType::BF16 => {
            let v = uniform(n, seed, a);
            if dtype == DType::F16 {
                v.iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect()
            } else {
                v.iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect()
            }
        }
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => {
            let blocks = n / QK;
            let size = dtype.type_size();
            let mut out = vec![0u8; blocks * size];
            r.fill(&mut out);
            // Uniform nibbles have std 4.6 (bytes: 73.6); pick d to give `std`.
            let (d, m) = match dtype {
                DType::Q8_0 => (std / 73.6, 0.0),
                DType::Q4_0 => (std / 4.6, 0.0),
                _ => (std / 4.6, -7.5 * std / 4.6),
            };
            let (d, m) = (
                f16::from_f32(d).to_le_bytes(),
                f16::from_f32(m).to_le_bytes(),
            );
            for b in out.chunks_exact_mut(size) {
                b[..2].copy_from_slice(&d);
                if dtype == DType::Q4_1 {
                    b[2..4].copy_from_slice(&m);
                }
            }
            out
        }
    }
}

impl TensorSource for SyntheticSource {
    fn location(&self) -> &Path {
        Path::new("<synthetic>")
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|(s, _)| s.clone())
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let (dtype, shape, bytes) = self.generate(name).ok_or_else(|| Error::MissingTensor {
            path: PathBuf::from("<synthetic>"),
            name: name.to_string(),
        })?;
        Ok(HostTensor::new(dtype, shape, Storage::from_bytes(&bytes)))
    }
    fn path_of(&self, _name: &str) -> PathBuf {
        PathBuf::from("<synthetic>")
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// Writes the language model of a LLaMA-architecture synthetic model as a llama GGUF
/// (llama.cpp's tensor names, Q/K rows permuted to the interleaved RoPE order its converter
/// uses, a SentencePiece-style vocabulary of placeholder pieces), for running the same
/// shapes in llama.cpp. Returns the bytes written.
/// Writes the synthetic models' tokenizer into GGUF metadata: a SentencePiece vocabulary of
/// `<unk>`, `<s>`, `</s>`, the 256 byte pieces and numbered placeholders (text tokenises to
/// its bytes, as many tokens as a real vocabulary would give a little more).
fn write_vocab(w: &mut crate::load::gguf::Writer, vocab_size: usize) {
    use crate::load::gguf::Value;
    let s = |v: &str| Value::String(v.to_string());
    let mut tokens = vec![s("<unk>"), s("<s>"), s("</s>")];
    let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
    for b in 0..256 {
        tokens.push(s(&format!("<0x{b:02X}>")));
        types.push(Value::I32(6));
    }
    while tokens.len() < vocab_size {
        tokens.push(s(&format!("\u{2581}t{}", tokens.len())));
        types.push(Value::I32(1));
    }
    let scores = (0..tokens.len()).map(|i| Value::F32(-(i as f32))).collect();
    w.metadata("tokenizer.ggml.model", s("llama"));
    w.metadata("tokenizer.ggml.tokens", Value::Array(tokens));
    w.metadata("tokenizer.ggml.scores", Value::Array(scores));
    w.metadata("tokenizer.ggml.token_type", Value::Array(types));
    w.metadata("tokenizer.ggml.bos_token_id", Value::U32(1));
    w.metadata("tokenizer.ggml.eos_token_id", Value::U32(2));
    w.metadata("tokenizer.ggml.unknown_token_id", Value::U32(0));
}

/// The tokenizer of the synthetic model `name` (see [`write_vocab`]).
pub fn tokenizer(name: &str) -> Result<crate::load::tokenizer::Tokenizer> {
    let spec = spec(name)?;
    let mut w = crate::load::gguf::Writer::default();
    write_vocab(&mut w, spec.llm.vocab_size);
    let file =
        crate::load::gguf::GgufFile::from_bytes(Path::new("<synthetic tokenizer>"), &w.to_bytes())?;
    crate::load::gguf_tokenizer::tokenizer(&file)
}

pub fn write_llama_gguf(name: &str, dtype: DType, path: &Path) -> Result<usize> {
    use crate::load::gguf::{GgmlType, Value, Writer};
    let spec = spec(name)?;
    let c = &spec.llm;
    if c.arch != LlmArch::Llama {
        return Err(Error::InvalidArgument(format!(
            "{name}: only LLaMA-architecture language models can be written as a llama GGUF"
        )));
    }
    let src = SyntheticSource::new(&spec, dtype, DType::F16);
    let mut w = Writer::default();
    let s = |v: &str| Value::String(v.to_string());
    w.metadata("general.architecture", s("llama"));
    w.metadata("general.name", s(&format!("pocketvlm synthetic {name}")));
    w.metadata("general.alignment", Value::U32(32));
    w.metadata("llama.block_count", Value::U32(c.num_layers as u32));
    w.metadata(
        "llama.context_length",
        Value::U32(c.max_position_embeddings as u32),
    );
    w.metadata("llama.embedding_length", Value::U32(c.hidden_size as u32));
    w.metadata(
        "llama.feed_forward_length",
        Value::U32(c.intermediate_size as u32),
    );
    w.metadata("llama.attention.head_count", Value::U32(c.num_heads as u32));
    w.metadata(
        "llama.attention.head_count_kv",
        Value::U32(c.num_kv_heads as u32),
    );
    w.metadata(
        "llama.rope.dimension_count",
        Value::U32(c.rope.rotary_dim as u32),
    );
    w.metadata("llama.rope.freq_base", Value::F32(c.rope.theta));
    w.metadata(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(c.norm_eps),
    );
    w.metadata("llama.vocab_size", Value::U32(c.vocab_size as u32));
    write_vocab(&mut w, c.vocab_size);

    let hd = c.head_dim;
    let mut put = |gguf: &str, hf: &str, permute_heads: Option<usize>| -> Result<()> {
        let (dt, shape, mut bytes) = src.generate(hf).ok_or_else(|| Error::MissingTensor {
            path: PathBuf::from("<synthetic>"),
            name: hf.to_string(),
        })?;
        if let Some(heads) = permute_heads {
            bytes = permute_rows(&bytes, heads, hd, bytes.len() / shape[0]);
        }
        w.tensor(gguf, &shape, GgmlType::from_dtype(dt), bytes);
        Ok(())
    };
    put("token_embd.weight", "model.embed_tokens.weight", None)?;
    for i in 0..c.num_layers {
        let l = format!("model.layers.{i}");
        put(
            &format!("blk.{i}.attn_norm.weight"),
            &format!("{l}.input_layernorm.weight"),
            None,
        )?;
        put(
            &format!("blk.{i}.attn_q.weight"),
            &format!("{l}.self_attn.q_proj.weight"),
            Some(c.num_heads),
        )?;
        put(
            &format!("blk.{i}.attn_k.weight"),
            &format!("{l}.self_attn.k_proj.weight"),
            Some(c.num_kv_heads),
        )?;
        put(
            &format!("blk.{i}.attn_v.weight"),
            &format!("{l}.self_attn.v_proj.weight"),
            None,
        )?;
        put(
            &format!("blk.{i}.attn_output.weight"),
            &format!("{l}.self_attn.o_proj.weight"),
            None,
        )?;
        put(
            &format!("blk.{i}.ffn_norm.weight"),
            &format!("{l}.post_attention_layernorm.weight"),
            None,
        )?;
        put(
            &format!("blk.{i}.ffn_gate.weight"),
            &format!("{l}.mlp.gate_proj.weight"),
            None,
        )?;
        put(
            &format!("blk.{i}.ffn_up.weight"),
            &format!("{l}.mlp.up_proj.weight"),
            None,
        )?;
        put(
            &format!("blk.{i}.ffn_down.weight"),
            &format!("{l}.mlp.down_proj.weight"),
            None,
        )?;
    }
    put("output_norm.weight", "model.norm.weight", None)?;
    if !c.tie_word_embeddings {
        put("output.weight", "lm_head.weight", None)?;
    }
    let bytes = w.to_bytes();
    std::fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes.len())
}

/// llama.cpp's converter permutation of Q/K rows: within each head, row `i` of the first
/// half and row `i` of the second half become rows `2i` and `2i + 1`.
fn permute_rows(bytes: &[u8], heads: usize, head_dim: usize, row_bytes: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..head_dim {
            let src = h * head_dim + if i % 2 == 0 { i / 2 } else { half + i / 2 };
            let dst = h * head_dim + i;
            out[dst * row_bytes..(dst + 1) * row_bytes]
                .copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::Model;
    use crate::model::vlm::{QuantPolicy, Vlm};

    #[test]
    fn every_name_has_a_spec_and_smollm2_runs() {
        for n in NAMES {
            let s = spec(n).unwrap();
            let src = SyntheticSource::new(&s, DType::Q4_0, DType::F16);
            assert!(src.total_bytes() > 0, "{n}");
        }
        assert!(spec("nope").is_err());
        let s = spec("smollm2-135m").unwrap();
        let src = SyntheticSource::new(&s, DType::Q8_0, DType::F16);
        let be = CpuBackend::new(Some(2)).unwrap();
        let mut m = Vlm::load(be, &s, &src, QuantPolicy::default(), 64).unwrap();
        let logits = m
            .forward(
                &[crate::model::Segment::Tokens(&[1, 2, 3])],
                0,
                crate::model::Logits::Last,
            )
            .unwrap();
        assert_eq!(logits.len(), 49152);
        assert!(logits.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn the_permutation_interleaves_halves() {
        // One head of 4 rows of 1 byte: rows [a, b, c, d] → [a, c, b, d].
        assert_eq!(permute_rows(&[0, 1, 2, 3], 1, 4, 1), vec![0, 2, 1, 3]);
    }
}
