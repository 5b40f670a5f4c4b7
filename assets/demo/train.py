#!/usr/bin/env python3
"""Trains PocketVLM's bundled demo model from scratch: a tiny MobileVLM V2 that answers
questions about procedurally drawn scenes (shapes and short words).

    python train.py                       # train, write the checkpoint to this folder
    python train.py --eval-set DIR        # write the held-out evaluation set (seed 2)
    python train.py --samples DIR         # write the sample scenes the app offers

Everything is generated here: scenes, question/answer pairs, a byte-level BPE trained on
that corpus, and a model in MobileVLM V2's exact checkpoint layout:

  model.embed_tokens / model.layers.* / model.norm / lm_head      LLaMA language model
  model.vision_tower.vision_tower.vision_model.*                  CLIP ViT (transformers 4 names)
  model.mm_projector.{mlp.mlp.0, mlp.mlp.2, peg.peg.0}            LDPv2 projector

with config.json (`model_type: "mobilevlm"`, `mm_projector_type: "ldpnetv2"`), the tower's
own config.json + preprocessor_config.json in a sub-directory, tokenizer.json and the
Vicuna-v1 conversation format of MobileVLM. The modules below compute what transformers'
LlamaForCausalLM and CLIPVisionModel and MobileVLM's LDPNetV2Projector compute (the export
step checks that against transformers when it is installed).

Deterministic given --seed (same machine, same thread count). Standalone: needs only the
packages pinned in requirements.txt.
"""

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

# ----------------------------------------------------------------------------------------
# Vocabulary of the scenes.

IMAGE_SIZE = 192          # model input; patch 16 → 12×12 grid = LDPv2's pooled grid
PATCH = 16
CELL = IMAGE_SIZE // 3    # scenes are laid out on a 3×3 grid
IMAGE_TOKENS = 144        # LDPv2 pools to 12×12

COLOURS = {
    "red": (220, 32, 36),
    "orange": (255, 140, 0),
    "yellow": (250, 215, 0),
    "green": (30, 160, 60),
    "blue": (35, 80, 225),
    "purple": (135, 50, 190),
    "pink": (255, 110, 190),
    "brown": (135, 80, 35),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
KINDS = ["circle", "square", "triangle", "star", "diamond", "cross"]
PLURAL = {k: k + "es" if k.endswith("s") else k + "s" for k in KINDS}
NUMBERS = ["no", "one", "two", "three", "four"]
POSITIONS = [  # cell index = 3 * row + column
    "at the top left", "at the top", "at the top right",
    "on the left", "in the middle", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
]
ROW_POSITIONS = ["at the top", "in the middle", "at the bottom"]
WORDS = ["cat", "dog", "sun", "moon", "tree", "fish", "bird", "book", "cake", "rain",
         "milk", "home", "love", "stop", "open", "exit", "hello", "happy", "water", "apple",
         "music", "smile", "pizza", "robot"]

# Backgrounds: light and dark plain colours, gradients, noise.
LIGHT_BG = [(255, 255, 255), (245, 240, 225), (225, 225, 225), (205, 225, 245),
            (215, 240, 210), (250, 225, 225), (240, 235, 250)]
DARK_BG = [(40, 40, 48), (25, 35, 70), (30, 60, 40), (70, 30, 40)]

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL = ["<unk>", "<s>", "</s>"]
BOS_ID, EOS_ID, PAD_ID = 1, 2, 0


# ----------------------------------------------------------------------------------------
# Scenes.

def colour_distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def sample_background(rng):
    """(kind, colours, mean colour)."""
    r = rng.random()
    if r < 0.45:
        c = rng.choice(LIGHT_BG)
        return ("plain", (c,), c)
    if r < 0.6:
        c = rng.choice(DARK_BG)
        return ("plain", (c,), c)
    if r < 0.85:
        a, b = rng.sample(LIGHT_BG, 2)
        vertical = rng.random() < 0.5
        return ("vertical" if vertical else "horizontal", (a, b),
                tuple((x + y) // 2 for x, y in zip(a, b)))
    c = rng.choice(LIGHT_BG + DARK_BG)
    return ("noise", (c,), c)


def contrasting_colours(bg_colours):
    return [n for n, c in COLOURS.items()
            if all(colour_distance(c, b) > 110 for b in bg_colours)]


def sample_scene(rng, n_shapes=None, text=None, max_shapes=4):
    """A scene: background, 0–4 shapes on the 3×3 grid, optionally a word in one row."""
    bg = sample_background(rng)
    allowed = contrasting_colours(bg[1])
    scene = {"background": bg, "shapes": [], "text": None,
             "noise_seed": rng.randrange(1 << 30)}
    free = list(range(9))
    if text is None:
        text = rng.random() < 0.22
    if text:
        row = rng.randrange(3)
        size = rng.randint(26, 38)
        scene["text"] = {"word": rng.choice(WORDS), "colour": rng.choice(allowed), "row": row,
                         "size": size, "dx": rng.randint(-14, 14), "dy": rng.randint(-6, 6)}
        free = [c for c in free if c // 3 != row]
        if n_shapes is None:
            n_shapes = rng.choice([0, 0, 1, 1, 2])
    if n_shapes is None:
        n_shapes = rng.randint(1, max_shapes)
    for cell in sorted(rng.sample(free, n_shapes)):
        r = rng.uniform(13, 26)
        slack = (CELL / 2 - r - 2) * 0.7
        cx = (cell % 3 + 0.5) * CELL + rng.uniform(-slack, slack)
        cy = (cell // 3 + 0.5) * CELL + rng.uniform(-slack, slack)
        scene["shapes"].append({"kind": rng.choice(KINDS), "colour": rng.choice(allowed),
                                "cell": cell, "x": cx, "y": cy, "r": r,
                                "jitter": [rng.randint(-14, 14) for _ in range(3)]})
    return scene


def star_points(cx, cy, r, inner=0.45):
    pts = []
    for i in range(10):
        a = -math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_shape(d, kind, cx, cy, r, fill):
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r * 0.98, cy + r * 0.8), (cx + r * 0.98, cy + r * 0.8)],
                  fill=fill)
    elif kind == "star":
        d.polygon(star_points(cx, cy, r * 1.1), fill=fill)
    elif kind == "diamond":
        d.polygon([(cx, cy - r * 1.05), (cx + r * 0.75, cy), (cx, cy + r * 1.05),
                   (cx - r * 0.75, cy)], fill=fill)
    elif kind == "cross":
        w = r * 0.34
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(kind)


_FONTS = {}


def font(size):
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def render(scene, width=IMAGE_SIZE, height=None):
    """Draws a scene on a width×height canvas (the 3×3 layout scales with it)."""
    height = height or width
    sx, sy = width / IMAGE_SIZE, height / IMAGE_SIZE
    kind, cols, _ = scene["background"]
    if kind == "plain":
        img = Image.new("RGB", (width, height), cols[0])
    elif kind in ("vertical", "horizontal"):
        n = height if kind == "vertical" else width
        t = np.linspace(0.0, 1.0, n)[:, None]
        ramp = (np.array(cols[0])[None] * (1 - t) + np.array(cols[1])[None] * t).astype(np.uint8)
        arr = np.broadcast_to(ramp[:, None, :], (height, width, 3)) if kind == "vertical" \
            else np.broadcast_to(ramp[None, :, :], (height, width, 3))
        img = Image.fromarray(np.ascontiguousarray(arr))
    else:
        g = np.random.default_rng(scene["noise_seed"])
        noise = g.normal(0.0, 14.0, (height, width, 1))
        arr = np.clip(np.array(cols[0])[None, None] + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    s = min(sx, sy)
    for sh in scene["shapes"]:
        fill = tuple(int(min(255, max(0, c + j)))
                     for c, j in zip(COLOURS[sh["colour"]], sh["jitter"]))
        draw_shape(d, sh["kind"], sh["x"] * sx, sh["y"] * sy, sh["r"] * s, fill)
    t = scene["text"]
    if t is not None:
        f = font(max(8, round(t["size"] * s)))
        cx = (IMAGE_SIZE / 2 + t["dx"]) * sx
        cy = ((t["row"] + 0.5) * CELL + t["dy"]) * sy
        d.text((cx, cy), t["word"], fill=COLOURS[t["colour"]], font=f, anchor="mm")
    return img


# ----------------------------------------------------------------------------------------
# Image preprocessing: MobileVLM's expand2square with the mean colour, then
# CLIPImageProcessor (resize the shortest edge, bicubic; centre crop; rescale; normalise).

def expand2square(img, fill):
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def preprocess(img):
    img = expand2square(img.convert("RGB"), tuple(int(x * 255) for x in CLIP_MEAN))
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def render_for_training(scene, rng):
    """Most scenes at the model's size; some larger or non-square, as a user's picture
    would arrive, going through the same padding and resizing as at inference. Also
    returns whether the 3×3 layout fills the model's square input (not padded)."""
    r = rng.random()
    if r < 0.6:
        return render(scene), True
    if r < 0.85:
        return render(scene, rng.choice([256, 288, 384])), True
    # Non-square: the layout stretches with the canvas; pad to a square like MobileVLM.
    side = rng.choice([192, 256, 320])
    other = int(side * rng.uniform(0.65, 0.9))
    img = render(scene, side, other) if rng.random() < 0.5 else render(scene, other, side)
    return img, False


# ----------------------------------------------------------------------------------------
# Questions and answers.

def count_phrase(n, noun_singular, noun_plural):
    if n == 0:
        return f"There are no {noun_plural}."
    if n == 1:
        return f"There is one {noun_singular}."
    return f"There are {NUMBERS[n]} {noun_plural}."


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def shape_phrase(sh):
    return f"{article(sh['colour'])} {sh['colour']} {sh['kind']} {POSITIONS[sh['cell']]}"


def join_and(items):
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def describe(scene):
    shapes = scene["shapes"]  # reading order (sorted by cell)
    parts = []
    t = scene["text"]
    if t is not None:
        parts.append(f"The word \"{t['word']}\" is written in {t['colour']} {ROW_POSITIONS[t['row']]}.")
        if len(shapes) == 1:
            parts.append(f"There is also {shape_phrase(shapes[0])}.")
        elif shapes:
            parts.append(f"There are also {NUMBERS[len(shapes)]} shapes: "
                         f"{join_and([shape_phrase(s) for s in shapes])}.")
    elif len(shapes) == 1:
        parts.append(f"There is {shape_phrase(shapes[0])}.")
    else:
        parts.append(f"There are {NUMBERS[len(shapes)]} shapes: "
                     f"{join_and([shape_phrase(s) for s in shapes])}.")
    return " ".join(parts)


def style(rng, q):
    """Small variations in how people type a question."""
    if rng.random() < 0.15:
        q = q[0].lower() + q[1:]
    if rng.random() < 0.15 and q.endswith("?"):
        q = q[:-1]
    if rng.random() < 0.4:
        q = q.replace("colour", "color")
    return q


DESCRIBE_Q = ["Describe the image.", "What is in the image?", "What do you see?",
              "Describe this picture.", "What does the image show?", "Describe the scene."]
COUNT_Q = ["How many shapes are there?", "How many shapes are in the image?",
           "How many objects are there?", "Count the shapes."]
TEXT_Q = ["What does the text say?", "What word is written?", "What is written in the image?",
          "Read the text.", "What does it say?"]


def questions(scene, rng):
    """Every (type, question, answer, cells) this scene supports, several per type. `cells`
    are the layout cells the answer is read from (the asked shape's, every counted shape's,
    the text row's; empty for descriptions and for answers about something absent): the
    training-only attention loss (see attention_loss) points a language-model head there."""
    shapes = scene["shapes"]
    kinds = [s["kind"] for s in shapes]
    colours = [s["colour"] for s in shapes]
    out = []

    def cells_of(pred):
        return tuple(s["cell"] for s in shapes if pred(s))

    out.append(("describe", rng.choice(DESCRIBE_Q), describe(scene), ()))

    # Counting: all shapes, and one kind (present or absent).
    if shapes or rng.random() < 0.5:
        out.append(("count", rng.choice(COUNT_Q), count_phrase(len(shapes), "shape", "shapes"),
                    cells_of(lambda s: True)))
    k = rng.choice(kinds) if shapes and rng.random() < 0.7 else rng.choice(KINDS)
    out.append(("count", rng.choice([f"How many {PLURAL[k]} are there?",
                                     f"How many {PLURAL[k]} are in the image?",
                                     f"How many {PLURAL[k]} can you see?"]),
                count_phrase(kinds.count(k), k, PLURAL[k]), cells_of(lambda s: s["kind"] == k)))

    for s in shapes:
        k, c, pos = s["kind"], s["colour"], POSITIONS[s["cell"]]
        here = (s["cell"],)
        unique_kind = kinds.count(k) == 1
        unique_colour = colours.count(c) == 1
        # Colour of a shape named by its kind (and its place when the kind repeats).
        if unique_kind:
            q = rng.choice([f"What colour is the {k}?", f"Which colour is the {k}?",
                            f"What is the colour of the {k}?"])
            out.append(("colour", q, f"The {k} is {c}.", here))
        else:
            out.append(("colour", f"What colour is the {k} {pos}?", f"The {k} {pos} is {c}.", here))
        # Shape of a shape named by its colour, or by its place.
        if unique_colour:
            q = rng.choice([f"What shape is the {c} one?", f"What is the {c} shape?",
                            f"Which shape is {c}?"])
            out.append(("shape", q, f"It is {article(k)} {k}.", here))
        out.append(("shape", rng.choice([f"What shape is {pos}?", f"What is {pos}?"]),
                    f"It is {article(c)} {c} {k}.", here))
        # Position.
        if unique_kind:
            q = rng.choice([f"Where is the {k}?", f"Where is the {k} in the image?"])
            out.append(("position", q, f"The {k} is {pos}.", here))
        elif sum(1 for x in shapes if x["kind"] == k and x["colour"] == c) == 1:
            out.append(("position", f"Where is the {c} {k}?", f"The {c} {k} is {pos}.", here))

    # Empty cells.
    occupied = {s["cell"] for s in shapes}
    if scene["text"] is not None:
        occupied |= {3 * scene["text"]["row"] + i for i in range(3)}
    empty = [c for c in range(9) if c not in occupied]
    if empty and rng.random() < 0.3:
        cell = rng.choice(empty)
        pos = POSITIONS[cell]
        out.append(("shape", rng.choice([f"What shape is {pos}?", f"What is {pos}?"]),
                    "There is nothing there.", (cell,)))

    # Yes/no, balanced.
    for _ in range(2):
        if rng.random() < 0.5 and shapes:
            s = rng.choice(shapes)
            if rng.random() < 0.5:
                out.append(("exists", f"Is there {article(s['kind'])} {s['kind']}?", "Yes.",
                            cells_of(lambda x: x["kind"] == s["kind"])))
            else:
                out.append(("exists", f"Is there {article(s['colour'])} {s['colour']} {s['kind']}?",
                            "Yes.", cells_of(lambda x: x["kind"] == s["kind"]
                                             and x["colour"] == s["colour"])))
        else:
            if rng.random() < 0.5:
                absent = [k for k in KINDS if k not in kinds]
                k = rng.choice(absent)
                out.append(("exists", rng.choice([f"Is there {article(k)} {k}?",
                                                  f"Are there any {PLURAL[k]}?"]), "No.", ()))
            else:
                pairs = {(s["colour"], s["kind"]) for s in shapes}
                for _ in range(20):
                    c = rng.choice(colours) if shapes and rng.random() < 0.5 else rng.choice(list(COLOURS))
                    k = rng.choice(kinds) if shapes and rng.random() < 0.5 else rng.choice(KINDS)
                    if (c, k) not in pairs:
                        out.append(("exists", f"Is there {article(c)} {c} {k}?", "No.", ()))
                        break

    t = scene["text"]
    if t is not None:
        row = tuple(3 * t["row"] + i for i in range(3))
        out.append(("text", rng.choice(TEXT_Q), f"It says \"{t['word']}\".", row))
        out.append(("text", rng.choice(["What colour is the text?", "What colour is the word?"]),
                    f"The text is {t['colour']}.", row))
        out.append(("text", rng.choice(["Where is the text?", "Where is the word?"]),
                    f"The text is {ROW_POSITIONS[t['row']]}.", row))
        out.append(("exists", "Is there any text?", "Yes.", row))
    elif rng.random() < 0.2:
        if rng.random() < 0.5:
            out.append(("text", rng.choice(TEXT_Q), "There is no text.", ()))
        else:
            out.append(("exists", "Is there any text?", "No.", ()))
    return [(ty, style(rng, q), a, cells) for ty, q, a, cells in out]


def pick_turns(qas, rng, n):
    """Up to n turns, at most two per type, the description often first."""
    rng.shuffle(qas)
    by_type = {}
    for qa in qas:
        by_type.setdefault(qa[0], []).append(qa)
    chosen = []
    types = list(by_type)
    rng.shuffle(types)
    for round_ in range(2):
        for ty in types:
            if len(by_type[ty]) > round_ and len(chosen) < n:
                if ty == "describe" and round_ > 0:
                    continue
                chosen.append(by_type[ty][round_])
    rng.shuffle(chosen)
    return chosen


def vicuna_text(turns):
    """conv_vicuna_v1 with the image in the first user message; returns the text after
    the image placeholder and the character spans the model is trained on (each answer
    with its leading space and closing </s>)."""
    text, spans = "", []
    for i, (_, q, a, _) in enumerate(turns):
        text += ("\n" if i == 0 else "USER: ") + q + " ASSISTANT:"
        start = len(text)
        text += " " + a + "</s>"
        spans.append((start, len(text)))
    return text, spans


PREFIX_TEXT = VICUNA_SYSTEM + " USER: "   # the first chunk, before "<image>"


# ----------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained on the corpus.

def build_tokenizer(seed, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    rng = random.Random(seed * 7919 + 1)
    corpus = [VICUNA_SYSTEM]
    for _ in range(3000):
        scene = sample_scene(rng)
        qas = questions(scene, rng)
        text, _ = vicuna_text(qas)
        corpus.append(PREFIX_TEXT + text.replace("</s>", " "))
    # Question words spelled as people may type them.
    corpus += [" ".join(KINDS + list(COLOURS) + WORDS).upper(), " ".join(PLURAL.values())]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    assert [tok.token_to_id(t) for t in SPECIAL] == [0, 1, 2]
    return tok


def encode_sample(tok, turns):
    """Token ids of the text after the image (BOS dropped, as tokenizer_image_token does)
    and per-token training targets (-100 outside the answers)."""
    ids, labels, _ = encode_turns(tok, turns)
    return ids, labels


def encode_turns(tok, turns, occupied=range(9)):
    """encode_sample, plus each token's answer cells as a 9-bit mask (bit c: layout cell c;
    0 outside the answers and for answers read from no cell), with the other `occupied`
    cells of such answers in bits 9–17."""
    text, spans = vicuna_text(turns)
    enc = tok.encode(text)
    ids, offsets = enc.ids[1:], enc.offsets[1:]
    labels, cells = [], []
    for tid, (a, b) in zip(ids, offsets):
        turn = None
        if b > a:
            turn = next((k for k, (s, e) in enumerate(spans) if s <= a and b <= e), None)
        labels.append(tid if turn is not None else -100)
        target = set() if turn is None else set(turns[turn][3])
        others = set(occupied) - target if target else set()
        cells.append(sum(1 << c for c in target) + sum(1 << (9 + c) for c in others))
    return ids, labels, cells


# ----------------------------------------------------------------------------------------
# Model: LLaMA + CLIP ViT + LDPv2 with MobileVLM's state-dict names.

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.h = cfg["hidden_size"], cfg["num_attention_heads"]
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.keep, self.kept = False, None

    def forward(self, x, cos, sin, cache=None, mask=None):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.h, -1).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.keep:  # for attention_loss (see MobileVLM.decoder)
            self.kept = (q, k)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], 2)
                v = torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        causal = t > 1 or cache is None
        if causal and k.shape[2] != t:
            raise ValueError("chunked prefill is not supported here")
        if mask is not None:  # training with isolated turns (see turn_layout)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class LlamaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, cache=None, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, v):
        super().__init__()
        h, p = v["hidden_size"], v["patch_size"]
        self.class_embedding = nn.Parameter(torch.randn(h) * 0.02)
        self.patch_embedding = nn.Conv2d(3, h, p, p, bias=False)
        self.position_embedding = nn.Embedding((v["image_size"] // p) ** 2 + 1, h)

    def forward(self, pixels):
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], 1) + self.position_embedding.weight[None]


class CLIPAttention(nn.Module):
    def __init__(self, v):
        super().__init__()
        h = v["hidden_size"]
        self.heads = v["num_attention_heads"]
        self.q_proj, self.k_proj = nn.Linear(h, h), nn.Linear(h, h)
        self.v_proj, self.out_proj = nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class CLIPMLP(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.fc1 = nn.Linear(v["hidden_size"], v["intermediate_size"])
        self.fc2 = nn.Linear(v["intermediate_size"], v["hidden_size"])

    def forward(self, x):
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick_gelu


class CLIPEncoderLayer(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.self_attn = CLIPAttention(v)
        self.layer_norm1 = nn.LayerNorm(v["hidden_size"], eps=v["layer_norm_eps"])
        self.mlp = CLIPMLP(v)
        self.layer_norm2 = nn.LayerNorm(v["hidden_size"], eps=v["layer_norm_eps"])

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(v) for _ in range(v["num_hidden_layers"]))


class CLIPVisionTransformer(nn.Module):
    """transformers' CLIPVisionTransformer (`vision_model`); returns hidden_states[select]."""

    def __init__(self, v, select_layer):
        super().__init__()
        self.embeddings = CLIPEmbeddings(v)
        self.pre_layrnorm = nn.LayerNorm(v["hidden_size"], eps=v["layer_norm_eps"])
        self.encoder = CLIPEncoder(v)
        self.post_layernorm = nn.LayerNorm(v["hidden_size"], eps=v["layer_norm_eps"])  # unused
        n = v["num_hidden_layers"]
        self.run_layers = n + 1 + select_layer if select_layer < 0 else select_layer

    def forward(self, pixels):
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers[:self.run_layers]:
            x = layer(x)
        return x


class CLIPVisionModel(nn.Module):
    def __init__(self, v, select_layer):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(v, select_layer)


class CLIPVisionTower(nn.Module):
    """MobileVLM's CLIPVisionTower: hidden_states[select_layer], CLS dropped ("patch")."""

    def __init__(self, v, select_layer):
        super().__init__()
        self.vision_tower = CLIPVisionModel(v, select_layer)

    def forward(self, pixels):
        return self.vision_tower.vision_model(pixels)[:, 1:]


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
        feat = x.transpose(1, 2).reshape(b, c, h, h)
        return (self.peg(feat) + feat).flatten(2).transpose(1, 2)


class LDPNetV2Projector(nn.Module):
    """MobileVLM V2's mobilevlm/model/vision_projector.py::LDPNetV2Projector."""

    def __init__(self, inc, ouc):
        super().__init__()
        self.mlp = FeatureIRLayer(inc, ouc)
        self.dwn = TokenDownLayer((12, 12))
        self.peg = PosInjectLayer(ouc, ouc)

    def forward(self, x):
        return self.peg(self.dwn(self.mlp(x)))


class MobileLlamaModel(nn.Module):
    def __init__(self, cfg, vcfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.vision_tower = CLIPVisionTower(vcfg, cfg["mm_vision_select_layer"])
        self.mm_projector = LDPNetV2Projector(vcfg["hidden_size"], cfg["hidden_size"])


class MobileVLM(nn.Module):
    def __init__(self, cfg, vcfg):
        super().__init__()
        self.cfg = cfg
        self.model = MobileLlamaModel(cfg, vcfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        hd = cfg["hidden_size"] // cfg["num_attention_heads"]
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def rope(self, t0, t):
        pos = torch.arange(t0, t0 + t, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None]
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos()[None, None], emb.sin()[None, None]

    def rope_at(self, positions):
        """cos and sin for explicit (batch, time) positions."""
        freqs = positions.float()[..., None] * self.inv_freq
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos()[:, None], emb.sin()[:, None]

    def image_embeds(self, pixels):
        return self.model.mm_projector(self.model.vision_tower(pixels))

    def decoder(self, x, t0=0, caches=None, layout=None, tap=False):
        """layout: optional (positions, attention mask) of isolated turns (turn_layout).
        tap: also return every layer's attention queries and keys (after RoPE) and its mask
        (for attention_loss)."""
        cos, sin = self.rope(t0, x.shape[1]) if layout is None else self.rope_at(layout[0])
        mask = None if layout is None else layout[1]
        tapped = []
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.keep = tap
            x = layer(x, cos, sin, None if caches is None else caches[i], mask)
            if tap:
                tapped.append((*layer.self_attn.kept, mask))
                layer.self_attn.keep, layer.self_attn.kept = False, None
        h = self.model.norm(x)
        return (h, tapped) if tap else h

    def embed_batch(self, prefix_ids, pixels, ids, image_rows=None):
        """[prefix text][image rows][text after the image] for a batch (same prefix)."""
        b = pixels.shape[0]
        pre = self.model.embed_tokens(prefix_ids)[None].expand(b, -1, -1)
        rows = self.image_embeds(pixels) if image_rows is None else image_rows
        return torch.cat([pre, rows, self.model.embed_tokens(ids)], 1)


class CellProbe(nn.Module):
    """Training-only auxiliary heads (not exported): every one of the projector's image
    rows must tell the colour and kind of the shape in its cell of the 3×3 layout (a 4×4
    block of the 12×12 grid), and which cell that is. This direct signal grounds the vision
    tower far sooner than the answers alone do, and it makes each cell's 16 rows carry the
    same (colour, kind, place): the language model then finds "the star" by attending to
    any of its rows and reads its colour and place there. Its RoPE positions are relative,
    so the place could not otherwise come from where the rows sit in the sequence."""

    def __init__(self, width, place_classes=9, count=False):
        super().__init__()
        self.colour = nn.Linear(width, len(COLOURS) + 1)  # last class: no shape
        self.kind = nn.Linear(width, len(KINDS) + 1)
        self.place = nn.Linear(width, place_classes)  # 10: "no shape" too (--place-probe occupied)
        # --count-probe: how many shapes of its cell's kind the scene has (0: empty cell), so
        # that "how many stars" is read from any star's rows, as a colour is; a language
        # model's attention averages over what it finds and cannot count it.
        self.same = nn.Linear(width, 5) if count else None

    def forward(self, rows):
        same = None if self.same is None else self.same(rows)
        return self.colour(rows), self.kind(rows), self.place(rows), same


def row_cells(n_rows):
    """The layout cell (3 * row + column) of each of the projector's n_rows image rows."""
    g = int(math.sqrt(n_rows))
    return torch.tensor([3 * (i // g * 3 // g) + (i % g) * 3 // g for i in range(n_rows)])


def cell_targets(scene):
    """Per cell of the 3×3 layout: (colour index, kind index, place of its shape), "none"
    as the last class of each, and the number of shapes of its shape's kind (0 if none)."""
    colour = [len(COLOURS)] * 9
    kind = [len(KINDS)] * 9
    place = [9] * 9
    names = list(COLOURS)
    for sh in scene["shapes"]:
        colour[sh["cell"]] = names.index(sh["colour"])
        kind[sh["cell"]] = KINDS.index(sh["kind"])
        place[sh["cell"]] = sh["cell"]
    kinds = [sh["kind"] for sh in scene["shapes"]]
    same = [0] * 9
    for sh in scene["shapes"]:
        same[sh["cell"]] = kinds.count(sh["kind"])
    return colour, kind, place, same


def model_configs(args):
    vcfg = {
        "hidden_size": args.vit_width, "intermediate_size": 4 * args.vit_width,
        "num_hidden_layers": args.vit_layers, "num_attention_heads": args.vit_width // 64,
        "image_size": IMAGE_SIZE, "patch_size": PATCH, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "num_channels": 3, "projection_dim": args.vit_width,
        "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "model_type": "clip_vision_model",
    }
    cfg = {
        "vocab_size": args.vocab, "hidden_size": args.width,
        "intermediate_size": args.ffn, "num_hidden_layers": args.layers,
        "num_attention_heads": args.width // 64, "num_key_value_heads": args.width // 64,
        "head_dim": 64, "rms_norm_eps": 1e-6, "rope_theta": args.rope_theta,
        "max_position_embeddings": 2048, "mm_vision_select_layer": -1,
    }
    return cfg, vcfg


# ----------------------------------------------------------------------------------------
# Data.

def encode_isolated(tok, turns):
    """Each turn encoded as the first and only one of its conversation, back to back, with
    each token's turn (1, 2, …) and its position within that turn."""
    ids, labels, segs, offs = [], [], [], []
    for k, turn in enumerate(turns):
        a, b = encode_sample(tok, [turn])
        ids += a
        labels += b
        segs += [k + 1] * len(a)
        offs += range(len(a))
    return ids, labels, segs, offs


def colour_bound(qa):
    """Whether a question names its shape by colour alone ("What is the red shape?") or by
    colour and a kind the scene repeats ("Where is the brown star?")."""
    words = set(qa[1].lower().replace("?", " ").split())
    return qa[0] in ("shape", "position") and any(c in words for c in COLOURS)


def make_batch(tok, rng, batch, turns_range, max_shapes, isolate=0.0, position_turns=0,
               max_len=220, avoid_cells="shapes", colour_turns=0):
    """A batch of scenes with several question/answer turns each. A fraction `isolate` of
    the scenes has its turns isolated (see turn_layout); the rest are one conversation. In
    scenes of two or more shapes, up to `position_turns` of the turns ask where a shape is,
    and up to `colour_turns` more ask about a shape named by its colour (colour_bound)."""
    pixels, seqs, types, cells = [], [], [], []
    for _ in range(batch):
        scene = sample_scene(rng, max_shapes=max_shapes)
        qas = questions(scene, rng)
        n = rng.randint(*turns_range)
        isolated = isolate > 0 and rng.random() < isolate
        where = [qa for qa in qas if qa[0] == "position"] if len(scene["shapes"]) > 1 else []
        rest = [qa for qa in qas if qa not in where] if position_turns else qas
        bound = ([qa for qa in rest if colour_bound(qa)]
                 if colour_turns and len(scene["shapes"]) > 1 else [])
        rest = [qa for qa in rest if qa not in bound] if colour_turns else rest
        while True:
            k = min(position_turns, len(where), n)
            k2 = min(colour_turns, len(bound), n - k)
            turns = pick_turns(list(rest), rng, n - k - k2)
            if position_turns:  # guarded so the default draws what earlier runs drew
                turns += rng.sample(where, k)
                rng.shuffle(turns)
            if colour_turns:
                turns += rng.sample(bound, k2)
                rng.shuffle(turns)
            if isolated:
                ids, labels, segs, offs = encode_isolated(tok, turns)
                att = [0] * len(ids)  # isolated turns are not attention-supervised
            else:
                ids, labels, att = encode_turns(tok, turns, [s["cell"] for s in scene["shapes"]]
                                                if avoid_cells == "shapes" else range(9))
                segs, offs = [0] * len(ids), list(range(len(ids)))
            if len(ids) <= max_len or n == 1:
                break
            n -= 1
        img, square = render_for_training(scene, rng)
        pixels.append(preprocess(img))
        colour, kind, place, same = cell_targets(scene)
        ignore = [-100] * 9
        cells.append((colour if square else ignore, kind if square else ignore,
                      place if square else ignore, same if square else ignore))
        # The cells mean rows of the 12×12 grid only when the picture fills it.
        att = att if square else [0] * len(ids)
        seqs.append(tuple(x[:max_len] for x in (ids, labels, segs, offs, att)))
        types.append([t[0] for t in turns])
    t = max(len(s[0]) for s in seqs)
    ids = torch.full((batch, t), PAD_ID, dtype=torch.long)
    labels = torch.full((batch, t), -100, dtype=torch.long)
    segs = torch.zeros((batch, t), dtype=torch.long)
    offs = torch.arange(t).repeat(batch, 1)
    att = torch.zeros((batch, t), dtype=torch.long)
    for i, (a, b, g, o, c) in enumerate(seqs):
        ids[i, :len(a)] = torch.tensor(a)
        labels[i, :len(b)] = torch.tensor(b)
        segs[i, :len(g)] = torch.tensor(g)
        offs[i, :len(o)] = torch.tensor(o)
        att[i, :len(c)] = torch.tensor(c)
    # colour, kind, place and same-kind count per cell, then the per-token answer cells.
    targets = tuple(torch.tensor([c[i] for c in cells], dtype=torch.long) for i in range(4))
    targets += (att,)
    return torch.stack(pixels), ids, labels, types, targets, (segs, offs)


def turn_layout(n_before, segs, offs):
    """RoPE positions and attention mask for a batch whose text tokens carry a turn number
    (0: one conversation, k > 0: isolated turn k) and a position within their text. An
    isolated turn sees the system prompt, the image and itself, at the positions it would
    have as a conversation's first turn — never the turns before it. So it cannot copy its
    answer from an earlier one (a description names the word and every shape's place): like
    a first question, the way the evaluation asks, it must read the image."""
    b, t = segs.shape
    seg = torch.cat([torch.zeros((b, n_before), dtype=torch.long), segs], 1)
    pos = torch.cat([torch.arange(n_before).repeat(b, 1), n_before + offs], 1)
    causal = torch.ones((n_before + t, n_before + t), dtype=torch.bool).tril()
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    return pos, (causal & same)[:, None]


def probe_loss(probe, rows, cells, place_of="all"):
    """The auxiliary per-row colour, kind and place losses (see CellProbe). A row's colour
    and kind are those of its cell's shape (ignored for padded, non-square pictures, whose
    layout does not fill the grid). Its place, with place_of="all", is where the row lies in
    the picture, whatever is there; with "occupied", the place of its cell's shape, and
    "none" for an empty cell — so a row says where it is only where there is something."""
    colour, kind, place, same = probe(rows)
    b, n, _ = rows.shape
    where = row_cells(n)
    place_target = where.repeat(b) if place_of == "all" else cells[2][:, where].flatten()
    loss = (F.cross_entropy(colour.flatten(0, 1).float(), cells[0][:, where].flatten(),
                            ignore_index=-100)
            + F.cross_entropy(kind.flatten(0, 1).float(), cells[1][:, where].flatten(),
                              ignore_index=-100)
            + F.cross_entropy(place.flatten(0, 1).float(), place_target, ignore_index=-100))
    if same is not None:
        loss = loss + F.cross_entropy(same.flatten(0, 1).float(), cells[3][:, where].flatten(),
                                      ignore_index=-100)
    return loss


def text_attention(tap, n_text, n_prefix):
    """One tapped layer's attention (see MobileVLM.decoder) from the positions that predict
    the n_text text tokens to the image rows, every head: (batch, heads, n_text,
    IMAGE_TOKENS), in f32."""
    q, k, mask = tap
    t = q.shape[2]
    q, k = q.float(), k.float()
    first = t - n_text - 1  # position p predicts token p + 1
    scores = q[:, :, first:t - 1] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = (torch.ones((t, t), dtype=torch.bool).tril()[first:t - 1] if mask is None
               else mask[:, :, first:t - 1])
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return probs[..., n_prefix:n_prefix + IMAGE_TOKENS]


def attention_loss(tapped, n_prefix, att_cells, layer, head, avoid=0.0):
    """Training-only attention supervision (nothing of it is exported), at every position
    that predicts an answer token read from some cells (make_batch's per-token masks: the
    answer's cells in bits 0–8, the cells to stay off in bits 9–17):

    - head `head` of layer `layer` should attend to the answer's cells: −log of its
      attention mass on their image rows;
    - with `avoid` > 0, every head of every layer should stay off the other cells:
      `avoid` × −log(1 − its mass there).

    The answers alone teach the language model to find the asked shape only loosely, and
    to read a place from wherever its heads look: every row carries its own place, so in a
    scene of several shapes a "where" answer names another shape's place (measured: see
    the model card). Pointing one head at the shape and keeping the others off the rest of
    the picture leaves the asked shape's rows as the only place to read."""
    n_text = att_cells.shape[1]
    sel = (att_cells & 511) != 0
    bits = (att_cells[..., None] >> torch.arange(18)) & 1  # (b, n_text, 18)
    rows = row_cells(IMAGE_TOKENS)
    target = bits[..., rows].bool()  # (b, n_text, 144)
    others = bits[..., 9 + rows].bool()
    if not sel.any():
        return tapped[0][0].sum() * 0.0
    loss = 0.0
    for i, tap in enumerate(tapped):
        if i != layer and not avoid:
            continue
        image = text_attention(tap, n_text, n_prefix)
        if i == layer:
            mass = (image[:, head] * target).sum(-1)[sel]
            loss = loss - torch.log(mass.clamp_min(1e-6)).mean()
        if avoid:
            stray = (image * others[:, None]).sum(-1).transpose(1, 2)[sel]  # (n, heads)
            loss = loss - avoid * torch.log((1 - stray).clamp_min(1e-6)).mean()
    return loss


def loss_and_logits(model, prefix_ids, pixels, ids, labels, image_rows=None, turns=None,
                    attend=None):
    """turns: the (segs, offs) of make_batch, for batches with isolated turns.
    attend: (layer, head, per-token cell masks, avoid weight) for attention_loss; then
    returns it too."""
    x = model.embed_batch(prefix_ids, pixels, ids, image_rows)
    n_before = prefix_ids.shape[0] + IMAGE_TOKENS
    layout = None if turns is None else turn_layout(n_before, *turns)
    if attend is None:
        h = model.decoder(x, layout=layout)
    else:
        h, tapped = model.decoder(x, layout=layout, tap=True)
    # Position p predicts token p+1: the hidden state before each text token.
    h_text = h[:, n_before - 1:-1]
    mask = labels != -100
    logits = model.lm_head(h_text[mask])
    loss = F.cross_entropy(logits.float(), labels[mask])
    if attend is None:
        return loss, logits, mask
    return loss, logits, mask, attention_loss(tapped, prefix_ids.shape[0], attend[2], attend[0],
                                              attend[1], attend[3])


@torch.no_grad()
def answer_accuracy(model, tok, prefix_ids, seed, n=160):
    """Teacher-forced exact match per question type: every answer token (and </s>) is the
    argmax — exactly when greedy decoding would produce the answer. One turn per image,
    as the evaluation asks."""
    rng = random.Random(seed)
    model.eval()
    hits, totals = {}, {}
    for _ in range(n // 32):
        pixels, seqs, types = [], [], []
        for _ in range(32):
            scene = sample_scene(rng)
            qa = rng.choice(questions(scene, rng))
            pixels.append(preprocess(render(scene)))
            seqs.append(encode_sample(tok, [qa]))
            types.append(qa[0])
        t = max(len(s[0]) for s in seqs)
        ids = torch.full((32, t), PAD_ID, dtype=torch.long)
        labels = torch.full((32, t), -100, dtype=torch.long)
        for i, (a, b) in enumerate(seqs):
            ids[i, :len(a)] = torch.tensor(a)
            labels[i, :len(b)] = torch.tensor(b)
        x = model.embed_batch(prefix_ids, torch.stack(pixels), ids)
        h = model.decoder(x)[:, prefix_ids.shape[0] + IMAGE_TOKENS - 1:-1]
        pred = model.lm_head(h).argmax(-1)
        ok = ((pred == labels) | (labels == -100)).all(-1)
        for ty, o in zip(types, ok.tolist()):
            totals[ty] = totals.get(ty, 0) + 1
            hits[ty] = hits.get(ty, 0) + int(o)
    model.train()
    return {ty: hits[ty] / totals[ty] for ty in sorted(totals)}


# ----------------------------------------------------------------------------------------
# Export.

def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


TOWER_DIR = "clip-vit-demo-patch16-192"


def export(model, tok, cfg, vcfg, out, meta):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous()
             for k, v in sorted(model.state_dict().items())}
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    tower = os.path.join(out, TOWER_DIR)
    os.makedirs(tower, exist_ok=True)
    write_json(os.path.join(tower, "config.json"), vcfg)
    write_json(os.path.join(tower, "preprocessor_config.json"), {
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_center_crop": True,
        "do_normalize": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "image_processor_type": "CLIPImageProcessor",
        "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": IMAGE_SIZE}})

    write_json(os.path.join(out, "config.json"), {
        "architectures": ["MobileLlamaForCausalLM"], "model_type": "mobilevlm",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "hidden_act": "silu",
        "hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"], "head_dim": cfg["head_dim"],
        "initializer_range": 0.02, "max_position_embeddings": cfg["max_position_embeddings"],
        "mlp_bias": False, "pretraining_tp": 1, "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_scaling": None, "rope_theta": cfg["rope_theta"], "tie_word_embeddings": False,
        "torch_dtype": "float16", "use_cache": True, "vocab_size": cfg["vocab_size"],
        "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "mm_hidden_size": vcfg["hidden_size"], "mm_projector_type": "ldpnetv2",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": cfg["mm_vision_select_layer"], "mm_vision_tower": TOWER_DIR,
        "vision_tower_type": "clip", "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    })
    write_json(os.path.join(out, "generation_config.json"), {
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
        "do_sample": False, "max_new_tokens": 128})
    tok.save(os.path.join(out, "tokenizer.json"))
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<unk>", "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"], "padding_side": "right",
        "tokenizer_class": "PreTrainedTokenizerFast"})
    write_json(os.path.join(out, "special_tokens_map.json"), {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
    write_json(os.path.join(out, "training_log.json"), meta)


def check_against_transformers(model, cfg, vcfg):
    """The exported weights in transformers' LlamaForCausalLM and CLIPVisionModel give what
    the training modules give (the layout and the maths are MobileVLM V2's)."""
    try:
        from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM
        from transformers import CLIPVisionModel as HFCLIP
    except ImportError:
        print("transformers is not installed: skipping the layout check")
        return
    state = model.state_dict()
    vision = HFCLIP(CLIPVisionConfig(**{k: v for k, v in vcfg.items() if k != "model_type"})).eval()
    # transformers 4 nests the transformer as `vision_model`; load into that module.
    target = getattr(vision, "vision_model", vision)
    prefix = "model.vision_tower.vision_tower.vision_model."
    missing = target.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                      if k.startswith(prefix)}, strict=False)
    assert not missing.unexpected_keys and all("position_ids" in k for k in missing.missing_keys), missing
    lcfg = LlamaConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                       intermediate_size=cfg["intermediate_size"],
                       num_hidden_layers=cfg["num_hidden_layers"],
                       num_attention_heads=cfg["num_attention_heads"],
                       num_key_value_heads=cfg["num_key_value_heads"],
                       rms_norm_eps=cfg["rms_norm_eps"],
                       max_position_embeddings=cfg["max_position_embeddings"],
                       rope_theta=cfg["rope_theta"], tie_word_embeddings=False)
    lm = LlamaForCausalLM(lcfg).eval()
    lm.load_state_dict({k: v for k, v in state.items()
                        if not k.startswith(("model.vision_tower", "model.mm_projector"))},
                       strict=True)
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    ids = torch.randint(3, cfg["vocab_size"], (1, 20))
    with torch.no_grad():
        ours_v = model.model.vision_tower(pixels)
        ref_v = vision(pixels, output_hidden_states=True).hidden_states[
            cfg["mm_vision_select_layer"]][:, 1:]
        x = model.model.embed_tokens(ids)
        ours_l = model.lm_head(model.decoder(x))
        ref_l = lm(input_ids=ids).logits
    dv = (ours_v - ref_v).abs().max().item() / ref_v.abs().max().item()
    dl = (ours_l - ref_l).abs().max().item() / ref_l.abs().max().item()
    print(f"layout check vs transformers: vision {dv:.2e}, language model {dl:.2e} (relative)")
    assert dv < 1e-4 and dl < 1e-4


# ----------------------------------------------------------------------------------------
# Evaluation set and sample images.

def write_eval_set(out, seed, n_images):
    """Held-out items: a tiny PNG per scene, 2 questions each, drawn evenly over the types."""
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    items = []
    plan = ["colour", "shape", "count", "position", "exists", "describe"]
    for i in range(n_images):
        text = i % 8 == 7
        scene = sample_scene(rng, text=text)
        name = f"{i:03d}.png"
        render(scene).save(os.path.join(out, name), optimize=True)
        qas = questions(scene, rng)
        wanted = ["text", "describe"] if text else [plan[(2 * i) % 6], plan[(2 * i + 1) % 6]]
        for ty in wanted:
            options = [qa for qa in qas if qa[0] == ty and (ty != "shape" or "nothing" not in qa[2])]
            if not options:
                options = [qa for qa in qas if qa[0] in ("count", "exists")]
            ty2, q, a, _ = rng.choice(options)
            item = {"image": name, "type": ty2, "question": q, "answer": a}
            if ty2 == "describe":
                item["shapes"] = [[s["colour"], s["kind"]] for s in scene["shapes"]]
                if scene["text"] is not None:
                    item["word"] = scene["text"]["word"]
            items.append(item)
    with open(os.path.join(out, "items.json"), "w") as f:
        json.dump({"seed": seed, "generator": "assets/demo/train.py", "items": items}, f, indent=1)
        f.write("\n")
    counts = {}
    for it in items:
        counts[it["type"]] = counts.get(it["type"], 0) + 1
    print(f"wrote {len(items)} items over {n_images} images to {out}: {counts}")


def write_samples(out):
    """The scenes the app offers one click away (384 px; the engine resizes them)."""
    os.makedirs(out, exist_ok=True)
    scenes = {
        "shapes.png": {"background": ("plain", ((245, 240, 225),), (245, 240, 225)),
                       "noise_seed": 0, "text": None, "shapes": [
                           {"kind": "star", "colour": "red", "cell": 0, "x": 34, "y": 30, "r": 22},
                           {"kind": "circle", "colour": "blue", "cell": 4, "x": 98, "y": 94, "r": 24},
                           {"kind": "triangle", "colour": "green", "cell": 8, "x": 158, "y": 162, "r": 21}]},
        "sign.png": {"background": ("vertical", ((205, 225, 245), (255, 255, 255)), (230, 240, 250)),
                     "noise_seed": 0,
                     "text": {"word": "hello", "colour": "purple", "row": 0, "size": 34, "dx": 0, "dy": 0},
                     "shapes": [
                         {"kind": "square", "colour": "orange", "cell": 6, "x": 30, "y": 160, "r": 20},
                         {"kind": "diamond", "colour": "pink", "cell": 8, "x": 160, "y": 158, "r": 22}]},
        "night.png": {"background": ("plain", ((25, 35, 70),), (25, 35, 70)), "noise_seed": 0,
                      "text": None, "shapes": [
                          {"kind": "star", "colour": "yellow", "cell": 2, "x": 160, "y": 32, "r": 24},
                          {"kind": "cross", "colour": "white", "cell": 3, "x": 32, "y": 96, "r": 18},
                          {"kind": "circle", "colour": "white", "cell": 5, "x": 160, "y": 96, "r": 16},
                          {"kind": "square", "colour": "green", "cell": 7, "x": 96, "y": 162, "r": 20}]},
    }
    for name, scene in scenes.items():
        for s in scene["shapes"]:
            s.setdefault("jitter", [0, 0, 0])
        render(scene, 384).save(os.path.join(out, name), optimize=True)
        print(name, "—", describe(scene))


# ----------------------------------------------------------------------------------------

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=here, help="where the checkpoint goes (default: this folder)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=704)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vit-width", type=int, default=192)
    ap.add_argument("--vit-layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--rope-theta", type=float, default=1e6,
                    help="the language model's RoPE base (LLaMA's is 10000): a larger base "
                         "leaves more of each head's dimensions for matching by content at any "
                         "distance, as finding a shape among the image rows needs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=600)
    ap.add_argument("--init", metavar="DIR",
                    help="start from this checkpoint's weights (a continuation run) instead of random")
    ap.add_argument("--turns", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                    help="question/answer turns per training scene")
    ap.add_argument("--isolate", type=float, default=0.0,
                    help="fraction of training scenes whose turns are isolated: each sees only "
                         "the image, not the answers before it (see turn_layout)")
    ap.add_argument("--colour-turns", type=int, default=1,
                    help="in scenes of two or more shapes, N turns ask about a shape named by "
                         "its colour (see colour_bound)")
    ap.add_argument("--position-turns", type=int, default=0,
                    help="in scenes of two or more shapes, how many turns ask where a shape is")
    ap.add_argument("--place-probe", choices=["all", "occupied"], default="all",
                    help="what the per-row place loss asks: every row where it lies, or only "
                         "the rows of a shape (see probe_loss)")
    ap.add_argument("--avoid-cells", choices=["shapes", "all"], default="all",
                    help="what --avoid-weight keeps attention off: the other shapes, or every "
                         "other cell of the picture")
    ap.add_argument("--count-probe", action=argparse.BooleanOptionalAction, default=True,
                    help="the probe also asks each row how many shapes of its kind there are")
    ap.add_argument("--probe-weight", type=float, default=0.5,
                    help="weight of the training-only per-row colour/kind/place loss")
    ap.add_argument("--attend-weight", type=float, default=0.5,
                    help="weight of the training-only attention loss (see attention_loss; 0: off)")
    ap.add_argument("--attend-layer", type=int, default=1)
    ap.add_argument("--attend-head", type=int, default=0)
    ap.add_argument("--avoid-weight", type=float, default=1.0,
                    help="part of the attention loss (off with it): every head of every layer "
                         "also pays this times −log(1 − attention on the other shapes or cells; "
                         "see --avoid-cells)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                    help="compute precision of the forward pass (bf16: autocast with fp32 "
                         "master weights, about twice as fast on CPUs with AVX-512 BF16 or AMX)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop training early after this long (the schedule is not shortened)")
    ap.add_argument("--eval-set", metavar="DIR", help="write the held-out evaluation set and exit")
    ap.add_argument("--eval-seed", type=int, default=2)
    ap.add_argument("--eval-images", type=int, default=100)
    ap.add_argument("--samples", metavar="DIR", help="write the sample scenes and exit")
    args = ap.parse_args()
    if args.init:  # a continuation keeps its checkpoint's RoPE base
        with open(os.path.join(args.init, "config.json")) as f:
            args.rope_theta = json.load(f).get("rope_theta", 10000.0)
    if args.eval_set:
        write_eval_set(args.eval_set, args.eval_seed, args.eval_images)
        return
    if args.samples:
        write_samples(args.samples)
        return

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    tok = build_tokenizer(args.seed, args.vocab)
    cfg, vcfg = model_configs(args)
    cfg["vocab_size"] = tok.get_vocab_size()
    prefix_ids = torch.tensor(tok.encode(PREFIX_TEXT).ids)
    print(f"tokenizer: {cfg['vocab_size']} tokens; prompt prefix {len(prefix_ids)} tokens", flush=True)

    model = MobileVLM(cfg, vcfg)
    if args.init:
        from safetensors.torch import load_file
        state = load_file(os.path.join(args.init, "model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        print(f"starting from {args.init}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)

    probe = CellProbe(cfg["hidden_size"], 9 if args.place_probe == "all" else 10, args.count_probe)
    params = list(model.named_parameters()) + [("probe." + n, p) for n, p in probe.named_parameters()]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        p = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    rng = random.Random(args.seed)
    log = {"steps": [], "evals": []}
    model.train()
    t_train = time.time()
    ema = None
    for step in range(args.steps):
        # Curriculum: one or two shapes first, then the full scenes.
        frac = step / args.steps
        max_shapes = 4 if args.init else 2 if frac < 0.1 else 3 if frac < 0.2 else 4
        pixels, ids, labels, _, cells, turns = make_batch(tok, rng, args.batch, tuple(args.turns),
                                                          max_shapes, args.isolate,
                                                          args.position_turns,
                                                          colour_turns=args.colour_turns,
                                                          avoid_cells=args.avoid_cells)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            rows = model.image_embeds(pixels)
            attend = ((args.attend_layer, args.attend_head, cells[4], args.avoid_weight)
                      if args.attend_weight > 0 else None)
            out = loss_and_logits(model, prefix_ids, pixels, ids, labels, rows,
                                  turns if args.isolate > 0 else None, attend)
            answer_loss = out[0]
            aux = probe_loss(probe, rows, cells, args.place_probe)
            loss = answer_loss + args.probe_weight * aux
            if attend is not None:
                att_loss = out[3]
                loss = loss + args.attend_weight * att_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            att_txt = f"attend {att_loss.item():.3f}  " if args.attend_weight > 0 else ""
            print(f"step {step:5d}  loss {loss.item():.4f}  ema {ema:.4f}  "
                  f"probe {aux.item():.3f}  {att_txt}"
                  f"lr {lr_at(step):.2e}  "
                  f"{el / 60:5.1f} min", flush=True)
            log["steps"].append({"step": step, "loss": round(loss.item(), 5), "minutes": round(el / 60, 2)})
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            acc = answer_accuracy(model, tok, prefix_ids, seed=args.seed + 1000)
            print("  held-out exact match (teacher-forced): " +
                  ", ".join(f"{k} {v:.0%}" for k, v in acc.items()), flush=True)
            log["evals"].append({"step": step + 1, **{k: round(v, 3) for k, v in acc.items()}})
            # A checkpoint at every evaluation, so a stopped run still leaves a model.
            export(model, tok, cfg, vcfg, args.out, {"partial": True, "step": step + 1, **log})
        if args.max_minutes is not None and time.time() - t_train > args.max_minutes * 60:
            print(f"stopping after {step + 1} steps: the {args.max_minutes} min limit", flush=True)
            log["stopped_at_step"] = step + 1
            break
    train_min = (time.time() - t_train) / 60

    model.eval()
    total_min = (time.time() - t_start) / 60
    meta = {"seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
            "init": args.init and os.path.basename(os.path.normpath(args.init)), "turns": list(args.turns),
            "isolate": args.isolate, "position_turns": args.position_turns,
            "colour_turns": args.colour_turns,
            "place_probe": args.place_probe, "attend_weight": args.attend_weight,
            "attend_layer": args.attend_layer, "attend_head": args.attend_head,
            "avoid_weight": args.avoid_weight, "avoid_cells": args.avoid_cells,
            "count_probe": args.count_probe, "rope_theta": args.rope_theta,
            "threads": args.threads, "precision": args.precision, "parameters": n_params, "train_minutes": round(train_min, 1),
            "total_minutes": round(total_min, 1), "torch": torch.__version__, **log}
    export(model, tok, cfg, vcfg, args.out, meta)
    check_against_transformers(model, cfg, vcfg)
    print(f"training {train_min:.1f} min, total {total_min:.1f} min; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
