"""Tiny random vision-language models in each family's exact checkpoint layout, with the
reference pipeline written from the MobileVLM and Imp repositories:

  image → processor (pad-to-square where the config says "pad") → vision tower
  (hidden_states[select_layer], CLS dropped for CLIP) → projector → embeddings spliced into
  the prompt at the image placeholder → language model.

| fixture       | LM          | tower  | projector   | image token              | template |
|---------------|-------------|--------|-------------|--------------------------|----------|
| mobilevlm_v1  | LLaMA (MHA) | CLIP   | ldpnet      | -200 sentinel (split)    | vicuna v1 |
| mobilevlm_v2  | LLaMA (MHA) | CLIP   | ldpnetv2    | -200 sentinel (split)    | vicuna v1 |
| imp_v1        | Phi-2       | SigLIP | mlp2x_gelu  | vocabulary id (<image>)  | phi2 (= vicuna v1) |
| imp_qwen      | Qwen2       | SigLIP | mlp2x_gelu  | vocabulary id            | Imp's qwen2 |
| imp_phi3      | Phi-3       | SigLIP | mlp2x_gelu  | vocabulary id, "pad"     | Imp's phi3 |
| imp_196       | Phi-2       | SigLIP at 28 px (14×14) | mlp2x_gelu | vocabulary id | phi2 |

Towers use real grid sizes with tiny patches: CLIP 96 px / patch 4 → 24×24 (576 patches, as
CLIP-L/336), SigLIP 54 px / patch 2 → 27×27 (729, as so400m/384); imp_196's 28 px → 14×14
(196, as Imp-v1.5-3B-196's so400m/196).
"""

import json
import math
import os
import shutil

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

SEED = 4321
IMAGE_TOKEN_INDEX = -200  # MobileVLM / LLaVA sentinel
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGES = ("shapes_square.png", "photo_wide.jpg")
QUESTION = "What is shown in this image?"
TAIL = 24          # positions of stored logits (the end of the prompt)
GREEDY = 16


# ----------------------------------------------------------------------------------------
# Projectors (MobileVLM: mobilevlm/model/vision_projector.py), same state-dict names.

def _make_divisible(v, divisor=8, min_value=None):
    """torchvision's rounding of channel counts."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class LayerNormAct2d(nn.LayerNorm):
    """timm LayerNormAct2d(act_layer=None): LayerNorm over channels of an NCHW map, eps 1e-5."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNorm(nn.Sequential):
    """torchvision Conv2dNormActivation: conv (no bias, norm follows), norm, activation."""

    def __init__(self, cin, cout, k, stride, groups, act):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  LayerNormAct2d(cout, eps=1e-5)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision SqueezeExcitation with scale_activation=Hardsigmoid."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    """torchvision InvertedResidual with expanded == input channels (no expand conv), SE,
    hardswish, LayerNorm; residual only for stride 1."""

    def __init__(self, c, stride):
        super().__init__()
        self.use_res_connect = stride == 1
        self.block = nn.Sequential(
            ConvNorm(c, c, 3, stride, c, nn.Hardswish),
            SqueezeExcitation(c, _make_divisible(c // 4, 8)),
            ConvNorm(c, c, 1, 1, 1, None))

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


class LDPBlock(nn.Module):
    def __init__(self, inc, ouc):
        super().__init__()
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
        self.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(ouc, 1), InvertedResidual(ouc, 2))

    def forward(self, x):
        b, n, _ = x.shape
        h = int(math.sqrt(n))
        x = self.mlp(x)
        x = x.permute(0, 2, 1).reshape(b, -1, h, h)
        x = self.mb_block(x)
        return x.flatten(2).permute(0, 2, 1)


class LDPNetProjector(nn.Module):
    def __init__(self, inc, ouc):
        super().__init__()
        self.model = LDPBlock(inc, ouc)

    def forward(self, x):
        return self.model(x)


class FeatureIRLayer(nn.Module):
    def __init__(self, inc, ouc):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))

    def forward(self, x):
        return self.mlp(x)


class TokenDownLayer(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.dwn = nn.Sequential(nn.AdaptiveAvgPool2d(shape))

    def forward(self, x):
        b, n, c = x.shape
        h = int(math.sqrt(n))
        x = x.permute(0, 2, 1).reshape(b, -1, h, h)
        return self.dwn(x).flatten(2).transpose(1, 2)


class PosInjectLayer(nn.Module):
    def __init__(self, inc, ouc):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(inc, ouc, 3, 1, 1, bias=True, groups=ouc))

    def forward(self, x):
        b, n, c = x.shape
        h = int(math.sqrt(n))
        feat = x.transpose(1, 2).view(b, c, h, h)
        return (self.peg(feat) + feat).flatten(2).transpose(1, 2)


class LDPNetV2Projector(nn.Module):
    def __init__(self, inc, ouc):
        super().__init__()
        self.mlp = FeatureIRLayer(inc, ouc)
        self.dwn = TokenDownLayer((12, 12))
        self.peg = PosInjectLayer(ouc, ouc)

    def forward(self, x):
        return self.peg(self.dwn(self.mlp(x)))


def mlp2x_gelu(inc, ouc):
    return nn.Sequential(nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))


# ----------------------------------------------------------------------------------------
# Image processing as the reference repos do it.

def expand2square(img, fill):
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def clip_processor(size):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def imp_processor(size):
    """ImpImageProcessor: squash-resize to size×size (bicubic), 1/255, mean = std = 0.5."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    return SiglipImageProcessorPil(size={"height": size, "width": size},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pixel_values(processor, path, pad):
    img = Image.open(path).convert("RGB")
    if pad:
        img = expand2square(img, tuple(int(x * 255) for x in processor.image_mean))
    return torch.tensor(np.asarray(processor(img, return_tensors="np")["pixel_values"][0]))


# ----------------------------------------------------------------------------------------
# Tokenisation.

class SlowLlamaTokenizer:
    """transformers 4's slow LlamaTokenizer (legacy=True) as MobileVLM uses it: split on
    special tokens, sentencepiece-encode every chunk (each gets the dummy prefix), BOS first."""

    def __init__(self, model_file):
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.specials = {"<s>": 1, "</s>": 2, "<unk>": 0}

    def __call__(self, text, add_bos=True):
        ids = [1] if add_bos else []
        rest = text
        while rest:
            hits = [(rest.find(t), t) for t in self.specials if rest.find(t) >= 0]
            if not hits:
                ids += self.sp.encode(rest)
                break
            pos, tok = min(hits)
            if pos > 0:
                ids += self.sp.encode(rest[:pos])
            ids.append(self.specials[tok])
            rest = rest[pos + len(tok):]
        return ids

    def decode(self, ids):
        return self.sp.decode([i for i in ids if i > 2])


def tokenizer_image_token(prompt, tok):
    """MobileVLM's mobilevlm/utils.py::tokenizer_image_token: chunks around "<image>", BOS kept
    from the first chunk only, -200 between chunks."""
    chunks = [tok(c) for c in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for i, c in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += c[1:]
    return ids


def vicuna_prompt(turns, system=VICUNA_SYSTEM):
    """conv_vicuna_v1 (SeparatorStyle.TWO): turns = [(user_text, assistant_text or None)]."""
    ret = system + " "
    seps = [" ", "</s>"]
    i = 0
    for user, assistant in turns:
        ret += "USER: " + user + seps[i % 2]
        i += 1
        if assistant is None:
            ret += "ASSISTANT:"
        else:
            ret += "ASSISTANT: " + assistant + seps[i % 2]
            i += 1
    return ret


def qwen2_prompt(question):
    """Imp's conv_qwen2."""
    return ("<|im_start|>system\n" + VICUNA_SYSTEM + "<|im_end|>" + "\n<|im_start|>user\n"
            + question + "<|im_end|>" + "\n<|im_start|>assistant\n")


def phi3_prompt(question):
    """Imp's conv_phi3."""
    return ("<|system|>\n" + VICUNA_SYSTEM + "<|end|>" + "\n<|user|>\n" + question + "<|end|>"
            + "\n<|assistant|>\n")


def bpe_tokenizer(src_dir, extra_special):
    """The truncated SmolLM2 byte-level BPE with extra special tokens appended (ids 1000+)."""
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(src_dir, "tokenizer.json"),
                                  bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": extra_special})
    return tok


def spm_fast_tokenizer(model_file, extra_special):
    """A tokenizer.json converted by transformers from the SentencePiece model, as Phi-3 ships."""
    from transformers import LlamaTokenizer
    d = os.path.dirname(model_file)
    tok = LlamaTokenizer.from_pretrained(d)
    tok.add_special_tokens({"additional_special_tokens": extra_special})
    return tok


# ----------------------------------------------------------------------------------------
# Models.

def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                is_scale = ("norm" in name or name.endswith(("ln.weight", "layernorm.weight"))) \
                    and name.endswith("weight")
                if ".block.0.1." in name or ".block.2.1." in name:
                    is_scale = name.endswith("weight")
                p.copy_((1.0 if is_scale else 0.0) + 0.1 * torch.randn_like(p))
            elif p.ndim == 4 and p.shape[1] == 1:  # depthwise 3×3
                p.copy_(torch.randn_like(p) / 3.0)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) * fan_in ** -0.5)


def round_to(module, dtype):
    """Rounds the parameters (what the checkpoint stores) to `dtype`; buffers such as RoPE's
    inverse frequencies are computed, not stored, and stay exact."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def clip_tower():
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, image_size=96, patch_size=4, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5, projection_dim=32)
    m = CLIPVisionModel(cfg).eval()
    m.set_attn_implementation("eager")
    return cfg, m


def siglip_tower(image_size=54, patch=2):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    cfg = SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                             num_attention_heads=4, image_size=image_size, patch_size=patch,
                             hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    m = SiglipVisionModel(cfg).eval()
    m.set_attn_implementation("eager")
    return cfg, m


def vision_features(tower, pixels, select_layer, drop_cls):
    with torch.no_grad():
        out = tower(pixels[None], output_hidden_states=True)
    feats = out.hidden_states[select_layer][0]
    return feats[1:] if drop_cls else feats


def splice(lm, ids, images, image_token):
    """prepare_inputs_labels_for_multimodal: text embeddings with each image placeholder
    replaced by that image's projector rows (in order)."""
    emb = lm.get_input_embeddings()
    parts, it = [], iter(images)
    text = []
    for t in ids:
        if t == image_token:
            if text:
                parts.append(emb(torch.tensor(text)))
                text = []
            parts.append(next(it))
        else:
            text.append(t)
    if text:
        parts.append(emb(torch.tensor(text)))
    return torch.cat(parts, 0)


def run_lm(lm, embeds):
    with torch.no_grad():
        logits = lm(inputs_embeds=embeds[None]).logits[0]
        out = lm.generate(inputs_embeds=embeds[None], max_new_tokens=GREEDY, min_new_tokens=GREEDY,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
    gen = out[0, -GREEDY:] if out.shape[1] > GREEDY else out[0]
    # The greedy path's smallest top-1/top-2 gap (robustness of the expected tokens).
    with torch.no_grad():
        emb = lm.get_input_embeddings()
        full = torch.cat([embeds, emb(gen[:-1])], 0)
        lg = lm(inputs_embeds=full[None]).logits[0, embeds.shape[0] - 1:]
    top2 = lg.topk(2, dim=-1).values
    return logits, gen, float((top2[:, 0] - top2[:, 1]).min())


def save_reference(path, tensors, meta):
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata={"meta": json.dumps(meta, sort_keys=True)})


def save_checkpoint(out, state, dtype, pytorch_bin=False):
    """model.safetensors of `state` in `dtype`, keys sorted — or, as MobileVLM's published
    repositories ship it, a torch.save `pytorch_model.bin`."""
    state = {k: v.detach().to(dtype).contiguous() for k, v in sorted(state.items())}
    if pytorch_bin:
        torch.save(state, os.path.join(out, "pytorch_model.bin"))
    else:
        save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def tower_state(tower, prefix, keep_layers=None):
    """A CLIP/SigLIP vision model's weights under LLaVA's prefix, in the transformers-4 layout
    (`vision_model.` inside the tower), optionally only the first `keep_layers` layers and
    without post-layernorm/head (what Imp deletes)."""
    out = {}
    for k, v in tower.state_dict().items():
        if keep_layers is not None:
            if k.startswith("encoder.layers."):
                if int(k.split(".")[2]) >= keep_layers:
                    continue
            elif k.startswith(("post_layernorm", "head.")):
                continue
        out[prefix + "vision_model." + k] = v
    return out


def llm_config_dict(cfg, model_type, architectures, extra):
    d = cfg.to_dict()
    for k in ("transformers_version", "id2label", "label2id", "output_hidden_states",
              "return_dict", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder"):
        d.pop(k, None)
    d["model_type"] = model_type
    d["architectures"] = architectures
    d.update(extra)
    return d


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


# ----------------------------------------------------------------------------------------

def mobilevlm(root, name, projector_type, images_dir, spm_dir):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED + (0 if projector_type == "ldpnet" else 1))
    out = os.path.join(root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    vcfg, tower = clip_tower()
    lcfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    lm = LlamaForCausalLM(lcfg).eval()
    lm.set_attn_implementation("eager")
    proj = (LDPNetProjector if projector_type == "ldpnet" else LDPNetV2Projector)(48, 64).eval()
    for m in (tower, lm, proj):
        randomize(m)
        round_to(m, torch.bfloat16)

    # The tower lives in its own folder, as a local copy of openai/clip-vit-large-patch14-336
    # would; config.json names it by relative path.
    tower_dir = os.path.join(out, "clip-vit-tiny-patch4-96")
    os.makedirs(tower_dir)
    vd = vcfg.to_dict()
    vd.pop("transformers_version", None)
    write_json(os.path.join(tower_dir, "config.json"), vd)
    write_json(os.path.join(tower_dir, "preprocessor_config.json"), {
        "crop_size": {"height": 96, "width": 96}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 96}})

    state = dict(lm.state_dict())
    state |= tower_state(tower, "model.vision_tower.vision_tower.")
    state |= {"model.mm_projector." + k: v for k, v in proj.state_dict().items()}
    # MobileVLM v1 as published: pytorch_model.bin only.
    save_checkpoint(out, state, torch.bfloat16, pytorch_bin=projector_type == "ldpnet")

    cfg = llm_config_dict(lcfg, "mobilevlm", ["MobileLlamaForCausalLM"], {
        "mm_hidden_size": 48, "mm_projector_type": projector_type, "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": "clip-vit-tiny-patch4-96",
        "vision_tower_type": "clip", "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "freeze_mm_mlp_adapter": False, "tune_mm_mlp_adapter": False, "use_mm_proj": True,
        "torch_dtype": "bfloat16"})
    cfg.pop("dtype", None)
    # transformers-4 style RoPE keys, as the real MobileVLM configs have.
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 10000.0
    cfg["rope_scaling"] = None
    write_json(os.path.join(out, "config.json"), cfg)
    shutil.copy(os.path.join(spm_dir, "tokenizer.model"), out)
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<unk>", "clean_up_tokenization_spaces": False,
        "model_max_length": 2048, "padding_side": "right", "tokenizer_class": "LlamaTokenizer",
        "sp_model_kwargs": {}})
    write_json(os.path.join(out, "special_tokens_map.json"), {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
    # llama.cpp's projector file for this model (v1: older converter, V2: newer).
    write_mmproj(os.path.join(out, "mmproj-model-f16.gguf"), tower, proj, vcfg,
                 "ldp" if projector_type == "ldpnet" else "ldpv2",
                 newer_converter=projector_type != "ldpnet")

    tok = SlowLlamaTokenizer(os.path.join(out, "tokenizer.model"))
    proc = clip_processor(96)
    ref, meta = {}, {"family": name, "seed": SEED}
    pix = {}
    for i, img in enumerate(IMAGES):
        pix[i] = pixel_values(proc, os.path.join(images_dir, img), pad=True)
        ref[f"pixel_values.{i}"] = pix[i]
    feats = {i: vision_features(tower, pix[i], -2, True) for i in pix}
    with torch.no_grad():
        projected = {i: proj(feats[i][None])[0] for i in feats}
    for i in feats:
        ref[f"vision_features.{i}"] = feats[i]
        ref[f"image_features.{i}"] = projected[i]

    # Single turn with image 0.
    prompt = vicuna_prompt([("<image>\n" + QUESTION, None)])
    ids = tokenizer_image_token(prompt, tok)
    embeds = splice(lm, ids, [projected[0]], IMAGE_TOKEN_INDEX)
    logits, gen, margin = run_lm(lm, embeds)
    ref["input_ids"] = torch.tensor(ids)
    ref["logits_tail"] = logits[-TAIL:]
    ref["generated_ids"] = gen
    meta |= {"prompt": prompt, "greedy_min_margin": margin, "sequence_length": embeds.shape[0]}

    # Two turns, an image in each.
    turns = [("<image>\n" + QUESTION, "Shapes."), ("<image>\nAnd this one?", None)]
    prompt2 = vicuna_prompt(turns)
    ids2 = tokenizer_image_token(prompt2, tok)
    embeds2 = splice(lm, ids2, [projected[0], projected[1]], IMAGE_TOKEN_INDEX)
    logits2, gen2, margin2 = run_lm(lm, embeds2)
    ref["multi.input_ids"] = torch.tensor(ids2)
    ref["multi.logits_tail"] = logits2[-TAIL:]
    ref["multi.generated_ids"] = gen2
    meta |= {"multi_prompt": prompt2, "multi_greedy_min_margin": margin2}
    save_reference(os.path.join(out, "reference.safetensors"), ref, meta)
    print(f"{name}: {len(ids)} ids → {embeds.shape[0]} positions, margin {margin:.4f}/{margin2:.4f}")


def imp(root, name, lm_kind, images_dir, spm_dir, tok_dir, image_size=54, seed=None):
    """`image_size` 28 (14×14 = 196 tokens, patch 2) is Imp-v1.5-3B-196's resolution
    reduction: the same model on a tower retrained at 196 px (196 tokens instead of 729)."""
    from transformers import Phi3Config, Phi3ForCausalLM, PhiConfig, PhiForCausalLM, Qwen2Config, \
        Qwen2ForCausalLM
    torch.manual_seed(seed if seed is not None else SEED + {"phi2": 10, "qwen2": 11, "phi3": 12}[lm_kind])
    out = os.path.join(root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    vcfg, tower = siglip_tower(image_size=image_size)
    vocab = 1024
    if lm_kind == "phi2":
        tok = bpe_tokenizer(tok_dir, ["<image>", "</s>"])
        eos = tok.convert_tokens_to_ids("</s>")
        lcfg = PhiConfig(vocab_size=vocab, hidden_size=80, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=1024, layer_norm_eps=1e-5,
                         hidden_act="gelu_new", tie_word_embeddings=False, bos_token_id=0, eos_token_id=eos,
                         pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                          "partial_rotary_factor": 0.4})
        lm = PhiForCausalLM(lcfg)
        model_type, arch, template = "imp", ["ImpForCausalLM"], lambda q: vicuna_prompt([(q, None)])
        aspect = "square"
    elif lm_kind == "qwen2":
        tok = bpe_tokenizer(tok_dir, ["<image>"])
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        lcfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
                           bos_token_id=1, eos_token_id=eos,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
        lm = Qwen2ForCausalLM(lcfg)
        model_type, arch, template = "imp_qwen2", ["ImpQwen2ForCausalLM"], qwen2_prompt
        aspect = "square"
    else:
        tok = spm_fast_tokenizer(os.path.join(spm_dir, "tokenizer.model"),
                                 ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<image>"])
        eos = tok.convert_tokens_to_ids("<|end|>")
        lcfg = Phi3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                          rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=600,
                          bos_token_id=1, eos_token_id=eos, pad_token_id=0,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        lm = Phi3ForCausalLM(lcfg)
        model_type, arch, template = "imp_phi3", ["ImpPhi3ForCausalLM"], phi3_prompt
        aspect = "pad"
    lm.eval()
    lm.set_attn_implementation("eager")
    image_token = tok.convert_tokens_to_ids("<image>")
    proj = mlp2x_gelu(48, lcfg.hidden_size).eval()
    for m in (tower, lm, proj):
        randomize(m)
        round_to(m, torch.float16)

    # Imp deletes the tower's layers after the selected one, its post-layernorm and head.
    keep = vcfg.num_hidden_layers - 1
    state = dict(lm.state_dict())
    state |= tower_state(tower, "model.vision_tower.vision_tower.", keep_layers=keep)
    state |= {"model.mm_projector." + k: v for k, v in proj.state_dict().items()}
    save_checkpoint(out, state, torch.float16)

    vd = vcfg.to_dict()
    vd.pop("transformers_version", None)
    cfg = llm_config_dict(lcfg, model_type, arch, {
        "mm_hidden_size": 48, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": "google/siglip-so400m-patch14-384" if image_size == 54 else "siglip-so400m-patch14-196",
        "vision_tower_config": vd, "image_aspect_ratio": aspect, "image_token": "<image>",
        "image_token_index": image_token, "tokenizer_model_max_length": 1024, "dtype": "float16"})
    write_json(os.path.join(out, "config.json"), cfg)
    tok.save_pretrained(out)

    proc = imp_processor(image_size)
    ref, meta = {}, {"family": name, "seed": SEED}
    pix = {}
    for i, img in enumerate(IMAGES):
        pix[i] = pixel_values(proc, os.path.join(images_dir, img), pad=(aspect == "pad"))
        ref[f"pixel_values.{i}"] = pix[i]
    # Imp's truncated tower: hidden_states[-1] after deleting the last layer = [-2] of the full.
    feats = {i: vision_features(tower, pix[i], -2, False) for i in pix}
    with torch.no_grad():
        projected = {i: proj(feats[i]) for i in feats}
    for i in feats:
        ref[f"vision_features.{i}"] = feats[i]
        ref[f"image_features.{i}"] = projected[i]

    prompt = template("<image>\n" + QUESTION)
    ids = tok(prompt).input_ids
    embeds = splice(lm, ids, [projected[0]], image_token)
    logits, gen, margin = run_lm(lm, embeds)
    ref["input_ids"] = torch.tensor(ids)
    ref["logits_tail"] = logits[-TAIL:]
    ref["generated_ids"] = gen
    meta |= {"prompt": prompt, "greedy_min_margin": margin, "sequence_length": embeds.shape[0]}
    save_reference(os.path.join(out, "reference.safetensors"), ref, meta)
    print(f"{name}: {len(ids)} ids → {embeds.shape[0]} positions, margin {margin:.4f}")


def llama_cpp_name(name):
    """llama.cpp's `convert_image_encoder_to_gguf.py` renaming (get_tensor_name)."""
    import re
    if "mm_projector" in name:
        name = name.replace("model.mm_projector", "mm")
        name = re.sub(r"mm\.mlp\.mlp", "mm.model.mlp", name, count=1)
        return re.sub(r"mm\.peg\.peg", "mm.model.peg", name, count=1)
    for a, b in [("vision_model", "v"), ("encoder.layers", "blk"), ("embeddings.", ""),
                 ("_proj", ""), ("self_attn.", "attn_"), ("layer_norm", "ln"), ("layernorm", "ln"),
                 ("mlp.fc1", "ffn_down"), ("mlp.fc2", "ffn_up"), ("embedding", "embd"),
                 ("final", "post"), ("layrnorm", "ln")]:
        name = name.replace(a, b)
    return name


def write_mmproj(path, tower, projector, vcfg, projector_type, newer_converter):
    """An mmproj GGUF as llama.cpp's converter writes one for MobileVLM (f16 matrices and
    conv kernels, f32 vectors, squeezed shapes). The older converter dropped the tower's
    last layer and wrote block_count = layers - 1; newer ones keep every layer and record
    the feature layer instead."""
    import gguf
    w = gguf.GGUFWriter(path, "clip")
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_file_type(1)
    w.add_name("tiny-clip")
    w.add_description("image encoder for LLaVA")
    w.add_string("clip.projector_type", projector_type)
    layers = vcfg.num_hidden_layers if newer_converter else vcfg.num_hidden_layers - 1
    w.add_uint32("clip.vision.image_size", vcfg.image_size)
    w.add_uint32("clip.vision.patch_size", vcfg.patch_size)
    w.add_uint32("clip.vision.embedding_length", vcfg.hidden_size)
    w.add_uint32("clip.vision.feed_forward_length", vcfg.intermediate_size)
    w.add_uint32("clip.vision.projection_dim", vcfg.projection_dim)
    w.add_uint32("clip.vision.attention.head_count", vcfg.num_attention_heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", vcfg.layer_norm_eps)
    w.add_uint32("clip.vision.block_count", layers)
    if newer_converter:
        w.add_array("clip.vision.feature_layer", [vcfg.num_hidden_layers - 1])
    w.add_array("clip.vision.image_mean", list(CLIP_MEAN))
    w.add_array("clip.vision.image_std", list(CLIP_STD))
    w.add_bool("clip.use_gelu", False)
    for name, data in projector.state_dict().items():
        data = data.squeeze().numpy()
        data = data.astype(np.float16 if data.ndim in (2, 4) or name.endswith("peg.0.weight") else np.float32)
        w.add_tensor(llama_cpp_name("model.mm_projector." + name), data)
    for name, data in tower.state_dict().items():
        name = "vision_model." + name
        if name.endswith("post_layernorm.weight") or name.endswith("post_layernorm.bias"):
            continue
        if not newer_converter and f"encoder.layers.{vcfg.num_hidden_layers - 1}." in name:
            continue
        data = data.squeeze().numpy()
        if data.ndim == 4 or (name.endswith(".weight") and data.ndim == 2):
            data = data.astype(np.float16)
        else:
            data = data.astype(np.float32)
        w.add_tensor(llama_cpp_name(name), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write(root, tok_dir):
    images_dir = os.path.join(root, "images")
    spm_dir = os.path.join(root, "spm")
    torch.set_num_threads(1)
    mobilevlm(root, "mobilevlm_v1", "ldpnet", images_dir, spm_dir)
    mobilevlm(root, "mobilevlm_v2", "ldpnetv2", images_dir, spm_dir)
    imp(root, "imp_v1", "phi2", images_dir, spm_dir, tok_dir)
    imp(root, "imp_qwen", "qwen2", images_dir, spm_dir, tok_dir)
    imp(root, "imp_phi3", "phi3", images_dir, spm_dir, tok_dir)
    imp(root, "imp_196", "phi2", images_dir, spm_dir, tok_dir, image_size=28, seed=SEED + 13)
