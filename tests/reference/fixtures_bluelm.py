"""BlueLM-V-3B's architecture as a tiny random model, with a PyTorch reference written from
the paper (arXiv 2411.10640): dynamic resolution (relaxed aspect-ratio matching) → SigLIP
tiles (+ a global thumbnail) → token downsampler (2×2 neighbourhoods concatenated along
channels, grid zero-padded to even size) → Linear–GELU–Linear → LLaMA-style LM.

BlueLM-V's weights are not public; the checkpoint layout is ours and documented in
ARCHITECTURE.md ("The bluelm-v checkpoint format").

Also writes `dynamic_resolution.json`: the grids LLaVA-NeXT's `select_best_resolution`
and the paper's relaxed rule choose on a table of image sizes (including the paper's
extreme aspect ratios), for the Rust tiling functions to match.
"""

import json
import math
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from fixtures_vlm import (GREEDY, IMAGES, QUESTION, TAIL, bpe_tokenizer, imp_processor,
                          llm_config_dict, randomize, round_to, run_lm, save_checkpoint,
                          save_reference, siglip_tower, splice, tower_state, vision_features,
                          write_json)

SEED = 4343  # greedy top-1/top-2 margin 0.33
TILE = 54           # the tiny tower's image size (a real BlueLM-V tile is 384)
MAX_TILES = 2       # keeps the fixture's sequences short (BlueLM-V: 9)
ALPHA = 0.1
VISION_BATCH = 2    # 3 passes run as 2 + 1, as the paper's 9 run as 4 + 4 + 1


# ----------------------------------------------------------------------------------------
# Dynamic resolution.

def candidate_grids(max_tiles):
    """(cols, rows) from the most tiles to the fewest; for one count, columns ascending."""
    return [(c, n // c) for n in range(max_tiles, 0, -1) for c in range(1, n + 1) if n % c == 0]


def select_best_resolution(original_size, possible_resolutions):
    """LLaVA-NeXT's llava/mm_utils.py::select_best_resolution, verbatim."""
    original_width, original_height = original_size
    best_fit = None
    max_effective_resolution = 0
    min_wasted_resolution = float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective_resolution = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted_resolution = (width * height) - effective_resolution
        if effective_resolution > max_effective_resolution or (
                effective_resolution == max_effective_resolution and wasted_resolution < min_wasted_resolution):
            max_effective_resolution = effective_resolution
            min_wasted_resolution = wasted_resolution
            best_fit = (width, height)
    return best_fit


def relaxed_best_resolution(original_size, possible_resolutions, alpha):
    """BlueLM-V's relaxed aspect-ratio matching: R_e and R_w as LLaVA-NeXT computes them;
    a candidate replaces the best when R_e − R_e,max > α·R_e,max, or when
    |R_e,max − R_e| < α·R_e,max and R_w < R_w,min. An equal R_e counts as "about the same"
    also when R_e,max is 0 (an image a pixel wide truncates to 0 everywhere), where the
    strict band is empty and the first, largest canvas would otherwise stay."""
    ow, oh = original_size
    best, max_eff, min_waste = None, 0, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / ow, height / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = width * height - eff
        if best is None or eff - max_eff > alpha * max_eff or (
                (abs(max_eff - eff) < alpha * max_eff or eff == max_eff) and waste < min_waste):
            best, max_eff, min_waste = (width, height), eff, waste
    return best


def grid_of(resolution, tile):
    return [resolution[0] // tile, resolution[1] // tile]


def resize_and_pad_image(image, target_resolution):
    """LLaVA-NeXT's resize_and_pad_image, verbatim (PIL's default resize filter: bicubic)."""
    original_width, original_height = image.size
    target_width, target_height = target_resolution
    scale_w = target_width / original_width
    scale_h = target_height / original_height
    if scale_w < scale_h:
        new_width = target_width
        new_height = min(math.ceil(original_height * scale_w), target_height)
    else:
        new_height = target_height
        new_width = min(math.ceil(original_width * scale_h), target_width)
    resized_image = image.resize((new_width, new_height))
    new_image = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    paste_x = (target_width - new_width) // 2
    paste_y = (target_height - new_height) // 2
    new_image.paste(resized_image, (paste_x, paste_y))
    return new_image


def tile_image(image, tile, max_tiles, alpha, thumbnail=True):
    """The vision passes of an image: row-major tiles of the chosen canvas, then (for more
    than one tile) the whole image squashed to one tile."""
    res = relaxed_best_resolution(image.size, [(c * tile, r * tile) for c, r in candidate_grids(max_tiles)],
                                  alpha)
    canvas = resize_and_pad_image(image, res)
    tiles = [canvas.crop((x, y, x + tile, y + tile))
             for y in range(0, res[1], tile) for x in range(0, res[0], tile)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.BICUBIC))
    return grid_of(res, tile), tiles


# Sizes for the rule table: the paper's examples and extreme aspect ratios, near-square
# pictures just over one tile, and a deterministic spread.
TABLE_SIZES = [
    (394, 390), (380, 76), (76, 380), (1920, 384), (384, 1920), (768, 1536), (1536, 768),
    (384, 384), (383, 385), (100, 100), (4000, 3000), (3000, 4000), (1000, 200), (200, 1000),
    (1024, 1024), (800, 600), (1280, 720), (720, 1280), (3840, 2160), (50, 2000), (2000, 50),
    (1, 1), (1, 4000), (777, 388), (390, 780), (1200, 400), (400, 1200), (1152, 1152),
    (2304, 384), (401, 799),
]
TABLE_SETTINGS = [(384, 9, 0.1), (384, 4, 0.1), (384, 9, 0.2), (336, 6, 0.05)]


def dynamic_resolution_table():
    gen = torch.Generator().manual_seed(SEED)
    sizes = list(TABLE_SIZES)
    for _ in range(60):
        w, h = torch.randint(16, 4097, (2,), generator=gen).tolist()
        sizes.append((w, h))
    rows = []
    for tile, max_tiles, alpha in TABLE_SETTINGS:
        cands = [(c * tile, r * tile) for c, r in candidate_grids(max_tiles)]
        for w, h in sizes:
            rows.append({"width": w, "height": h, "tile": tile, "max_tiles": max_tiles, "alpha": alpha,
                         "llava_next": grid_of(select_best_resolution((w, h), cands), tile),
                         "relaxed": grid_of(relaxed_best_resolution((w, h), cands, alpha), tile)})
    return rows


# ----------------------------------------------------------------------------------------
# The projector.

class TokenDownsampler(nn.Module):
    """Each 2×2 (f×f) neighbourhood of the token grid concatenated along channels, the grid
    first padded with zero tokens at the bottom and right to a multiple of f. Output tokens
    row-major; channels ordered by the neighbour's (row, column) within the neighbourhood."""

    def __init__(self, factor=2):
        super().__init__()
        self.f = factor

    def forward(self, x):  # [n, side², C]
        n, t, c = x.shape
        side = int(round(t ** 0.5))
        f = self.f
        g = -(-side // f)
        x = x.reshape(n, side, side, c)
        x = F.pad(x, (0, 0, 0, g * f - side, 0, g * f - side))
        x = x.reshape(n, g, f, g, f, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, g * g, f * f * c)


def projector(in_dim, out_dim, factor=2):
    return nn.Sequential(TokenDownsampler(factor), nn.Linear(factor * factor * in_dim, out_dim), nn.GELU(),
                         nn.Linear(out_dim, out_dim))


def bluelm_prompt(question):
    """BlueLM's chat format, no system prompt."""
    return "[|Human|]:" + question + "[|AI|]:"


# ----------------------------------------------------------------------------------------

def write(root, tok_dir):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    name = "bluelm_tiny"
    out = os.path.join(root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    images_dir = os.path.join(root, "images")

    vcfg, tower = siglip_tower()
    tok = bpe_tokenizer(tok_dir, ["<image>", "</s>"])
    eos = tok.convert_tokens_to_ids("</s>")
    lcfg = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=eos,
                       pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    lm = LlamaForCausalLM(lcfg).eval()
    lm.set_attn_implementation("eager")
    proj = projector(vcfg.hidden_size, lcfg.hidden_size).eval()
    for m in (tower, lm, proj):
        randomize(m)
        round_to(m, torch.float16)

    state = dict(lm.state_dict())
    state |= tower_state(tower, "model.vision_tower.")
    state |= {"model.mm_projector." + k: v for k, v in proj.state_dict().items()}
    save_checkpoint(out, state, torch.float16)

    vd = vcfg.to_dict()
    vd.pop("transformers_version", None)
    image_token = tok.convert_tokens_to_ids("<image>")
    cfg = llm_config_dict(lcfg, "bluelm_v", ["BlueLMVForCausalLM"], {
        "vision_config": vd, "vision_feature_layer": -2, "downsample": 2, "projector_hidden_act": "gelu",
        "dynamic_resolution": True, "max_tiles": MAX_TILES, "alpha": ALPHA, "use_thumbnail": True,
        "vision_batch": VISION_BATCH, "image_token_index": image_token, "dtype": "float16"})
    write_json(os.path.join(out, "config.json"), cfg)
    tok.save_pretrained(out)

    proc = imp_processor(TILE)
    ref, meta = {}, {"family": name, "seed": SEED}
    projected = {}
    for i, img_name in enumerate(IMAGES):
        img = Image.open(os.path.join(images_dir, img_name)).convert("RGB")
        grid, tiles = tile_image(img, TILE, MAX_TILES, ALPHA)
        pix = torch.stack([torch.tensor(proc(t, return_tensors="np")["pixel_values"][0]) for t in tiles])
        feats = torch.stack([vision_features(tower, p, -2, False) for p in pix])
        with torch.no_grad():
            projected[i] = proj(feats).reshape(-1, lcfg.hidden_size)
        ref[f"pixel_values.{i}"] = pix
        ref[f"vision_features.{i}"] = feats[0]  # the first pass's, to keep the file small
        ref[f"image_features.{i}"] = projected[i]
        meta[f"grid.{i}"] = grid
        meta[f"passes.{i}"] = len(tiles)

    # The wide photo: a 2×1 grid and the thumbnail, 3 passes of 196 tokens.
    prompt = bluelm_prompt("<image>\n" + QUESTION)
    ids = tok(prompt).input_ids
    embeds = splice(lm, ids, [projected[1]], image_token)
    logits, gen, margin = run_lm(lm, embeds)
    ref["input_ids"] = torch.tensor(ids)
    ref["logits_tail"] = logits[-TAIL:]
    ref["generated_ids"] = gen
    meta |= {"prompt": prompt, "image": IMAGES[1], "greedy_min_margin": margin,
             "sequence_length": embeds.shape[0], "greedy": GREEDY}
    save_reference(os.path.join(out, "reference.safetensors"), ref, meta)
    with open(os.path.join(out, "dynamic_resolution.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r, sort_keys=True) for r in dynamic_resolution_table()) + "\n]\n")
    print(f"{name}: {len(ids)} ids → {embeds.shape[0]} positions, margin {margin:.4f}")
