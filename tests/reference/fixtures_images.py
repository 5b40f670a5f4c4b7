"""Test images, drawn deterministically with PIL (no randomness from the OS or numpy
global state). Written to tests/fixtures/images/."""

import os

import numpy as np
from PIL import Image, ImageDraw


def _photo_like(width, height, seed):
    """Smooth gradients, a few shapes and mild noise: resampling has something to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * (0.5 + 0.5 * np.sin(x / width * 6.0 + 0.3))
    g = 255 * (y / max(height - 1, 1))
    b = 255 * (0.5 + 0.5 * np.cos((x + y) / (width + height) * 9.0))
    img = np.stack([r, g, b], axis=-1)
    img += rng.normal(0, 6, img.shape)
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    d.ellipse([width * 0.1, height * 0.2, width * 0.45, height * 0.7], fill=(230, 40, 40))
    d.rectangle([width * 0.55, height * 0.15, width * 0.9, height * 0.5], fill=(30, 200, 60))
    d.polygon([(width * 0.6, height * 0.9), (width * 0.75, height * 0.55), (width * 0.95, height * 0.92)],
              fill=(20, 60, 220))
    d.line([(0, 0), (width - 1, height - 1)], fill=(255, 255, 255), width=2)
    return img


def write(root):
    out = os.path.join(root, "images")
    os.makedirs(out, exist_ok=True)
    # The two images the model fixtures use: a landscape JPEG and a square PNG.
    _photo_like(160, 120, 1).save(os.path.join(out, "photo_wide.jpg"), quality=90)
    _photo_like(96, 96, 2).save(os.path.join(out, "shapes_square.png"))
    return out
