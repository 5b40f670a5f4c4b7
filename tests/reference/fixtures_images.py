"""Test images, drawn deterministically with PIL (no randomness from the OS or numpy
global state), and PIL/transformers references for the Rust image module.

write(root) writes:
- tests/fixtures/images/: the two images the model fixtures use (photo_wide.jpg,
  shapes_square.png — their bytes must not change), small images of every odd kind the
  decoder must handle, and two crafted PNG headers that claim huge sizes.
- tests/fixtures/preprocess/reference.safetensors: what PIL decodes, PIL's bicubic resizes,
  expand2square results and transformers' processor outputs (see write_preprocess).
"""

import json
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageOps


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


# ---------------------------------------------------------------------------------------
# Odd image kinds. Sizes are odd or non-square on purpose (row padding in BMP, uneven
# expand-to-square offsets, portrait and landscape crops).


def _rgba_png(path):
    """RGBA with every alpha level, and colour under alpha 0: dropping alpha (what
    convert('RGB') does) and compositing give visibly different results."""
    rgb = np.array(_photo_like(40, 27, 3))
    alpha = (np.arange(40 * 27, dtype=np.int64).reshape(27, 40) * 7 % 256).astype(np.uint8)
    alpha[:, :5] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)


def _palette_png(path):
    """Palette image whose tRNS chunk makes index 0 fully transparent."""
    idx = (np.add.outer(np.arange(21), np.arange(33)) % 16).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    palette = []
    for i in range(16):
        palette += [(i * 53) % 256, (i * 97 + 20) % 256, 255 - i * 15]
    im.putpalette(palette)
    im.save(path, transparency=0)


def _gray_png(path):
    Image.fromarray(np.array(_photo_like(29, 37, 4))[:, :, 1], "L").save(path)


def _gray_alpha_png(path):
    gray = np.array(_photo_like(24, 24, 5))[:, :, 0]
    alpha = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (24, 1))
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)


def gray16_values():
    """20x16 uint16 values: small ones (PIL passes them through) and large ones (PIL
    clips them to 255, a proper conversion scales them)."""
    v = (np.arange(320, dtype=np.int64) * 65535 // 319).astype(np.uint16)
    v[:12] = [0, 1, 127, 128, 129, 200, 255, 256, 257, 300, 385, 386]
    return v.reshape(16, 20)


def _gray16_png(path):
    im = Image.new("I;16", (20, 16))
    im.putdata(gray16_values().ravel().tolist())
    im.save(path)


def _exif_rotated_jpeg(path):
    """Stored landscape (48x32) with EXIF orientation 6: viewers show it portrait, turned
    90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo_like(48, 32, 6).save(path, quality=92, exif=exif.tobytes())


def _cmyk_jpeg(path):
    """A CMYK JPEG (as print workflows write them) with real black-ink (K) variation."""
    y, x = np.mgrid[0:24, 0:40]
    cmyk = np.stack([x * 6, y * 10, (x + y) * 4, (x * y) % 200], axis=-1).clip(0, 255)
    Image.fromarray(cmyk.astype(np.uint8), "CMYK").save(path, quality=95)


def _tiny_png(path):
    Image.new("RGB", (1, 1), (200, 50, 25)).save(path)


def _two_frame_gif(path):
    """Two frames with their own palettes; only the first may be decoded."""
    frames = []
    for k in range(2):
        idx = ((np.add.outer(np.arange(19), np.arange(26) * (k + 1))) % 8).astype(np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette([c for i in range(8) for c in ((i * 36 + 40 * k) % 256, 255 - i * 30, i * 20)])
        frames.append(im)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _bmp(path):
    _photo_like(17, 13, 7).save(path)  # 17 * 3 bytes per row: BMP pads rows to 4 bytes


def _lossless_webp(path):
    _photo_like(30, 20, 8).save(path, lossless=True)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(path, width, height, bit_depth, color_type):
    """A syntactically valid PNG whose IHDR claims a huge size and whose image data is a
    few bytes: what a decompression bomb looks like to a decoder reading its header."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64, 9)) + _png_chunk(b"IEND", b""))


# name -> writer. The order fixes the order in the reference file's metadata.
EXTRA_IMAGES = {
    "rgba.png": _rgba_png,
    "palette_trns.png": _palette_png,
    "gray.png": _gray_png,
    "gray_alpha.png": _gray_alpha_png,
    "gray16.png": _gray16_png,
    "exif_rot6.jpg": _exif_rotated_jpeg,
    "cmyk.jpg": _cmyk_jpeg,
    "tiny_1x1.png": _tiny_png,
    "two_frames.gif": _two_frame_gif,
    "odd_width.bmp": _bmp,
    "lossless.webp": _lossless_webp,
}

# Images every reference is computed for: the two model-fixture images first.
ALL_IMAGES = ["photo_wide.jpg", "shapes_square.png", *EXTRA_IMAGES]


def write_images(out):
    os.makedirs(out, exist_ok=True)
    # The two images the model fixtures use: a landscape JPEG and a square PNG.
    _photo_like(160, 120, 1).save(os.path.join(out, "photo_wide.jpg"), quality=90)
    _photo_like(96, 96, 2).save(os.path.join(out, "shapes_square.png"))
    for name, writer in EXTRA_IMAGES.items():
        writer(os.path.join(out, name))
    # 30000x30000 RGB8: over the decoder's side limit.
    _png_header_only(os.path.join(out, "huge_30000x30000.png"), 30000, 30000, 8, 2)
    # 16000x16000 RGBA16: within the side limit, but 2 GiB decoded (over the memory cap).
    _png_header_only(os.path.join(out, "huge_16000x16000_rgba16.png"), 16000, 16000, 16, 6)


# ---------------------------------------------------------------------------------------
# Preprocessing references.

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def expand2square(pil_img, background_color):
    """MobileVLM's / LLaVA's expand2square, verbatim in behaviour: the image is pasted
    centred with offset (long - short) // 2 on a canvas of the fill colour."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    if width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    result = Image.new(pil_img.mode, (height, height), background_color)
    result.paste(pil_img, ((height - width) // 2, 0))
    return result


def load_rgb(path):
    """What the engine decodes to, computed the PIL way: EXIF orientation applied (the
    engine's deliberate choice; the reference repos' plain open().convert('RGB') would not
    rotate), alpha dropped, palette expanded, grey replicated.

    Returned as a fresh image of the pixels only: convert('RGB') of a palette image with a
    tRNS chunk keeps info['transparency'], and transformers 5's convert_to_rgb then
    composites that colour onto white (transformers 4, which the reference repos run,
    returned RGB images untouched). The engine's RGB image has no transparency, like the
    pixels the model sees after MobileVLM's expand2square."""
    with Image.open(path) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return Image.fromarray(np.array(rgb), "RGB")


def scaled_gray16_rgb():
    """The engine's 16-to-8-bit conversion of gray16.png: round(v / 257)."""
    v8 = ((gray16_values().astype(np.int64) + 128) // 257).astype(np.uint8)
    return np.repeat(v8[:, :, None], 3, axis=2)


def resize_sizes(w, h):
    """(width, height) targets: down- and up-scaling, non-square, extreme ratios. Large
    images get an up-in-one-axis, down-in-the-other target instead of a big upscale, to
    keep the file small (the real-size references upscale them)."""
    mixed = (2 * w + 3, h + 5) if w * h <= 2000 else (w + 7, max(1, h // 4))
    sizes = [(24, 24), (17, 31), (max(1, w // 3), max(1, h // 2)), mixed, (1, 1), (3, 2)]
    return [s for i, s in enumerate(sizes) if s not in sizes[:i]]


def pipelines():
    """Processor configurations: name -> (pad fill or None, processor). Small sizes for
    every image; the real sizes are added in write_preprocess."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    def mobilevlm(size):
        return (tuple(int(x * 255) for x in CLIP_MEAN),
                CLIPImageProcessorPil(size={"shortest_edge": size},
                                      crop_size={"height": size, "width": size}))

    def imp(size, pad):
        fill = tuple(int(x * 255) for x in SIGLIP_MEAN) if pad else None
        return fill, SiglipImageProcessorPil(size={"height": size, "width": size})

    small = {
        # MobileVLM: CLIP ViT-L/14-336 processor, image_aspect_ratio "pad".
        "mobilevlm_28": mobilevlm(28),
        # Plain CLIP (no pad): shortest edge, then a non-square centre crop.
        "clip_26_crop_22x24": (None, CLIPImageProcessorPil(
            size={"shortest_edge": 26}, crop_size={"height": 22, "width": 24})),
        # Imp: SigLIP, squashed straight to size x size; and its "pad" variant.
        "imp_24": imp(24, pad=False),
        "imp_pad_24": imp(24, pad=True),
        # SigLIP to a non-square size.
        "siglip_20x30": (None, SiglipImageProcessorPil(size={"height": 20, "width": 30})),
    }
    real = {"mobilevlm_336": mobilevlm(336), "imp_384": imp(384, pad=False)}
    return small, real


def run_pipeline(fill, processor, img):
    if fill is not None:
        img = expand2square(img, fill)
    return processor(img, return_tensors="np")["pixel_values"][0]


def normalisation_table(processor):
    """The processor's output for every uint8 value in every channel: [3, 256] float32."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    out = processor(Image.fromarray(ramp, "RGB"), do_resize=False, do_center_crop=False,
                    return_tensors="np")["pixel_values"][0]
    return np.ascontiguousarray(out[:, 0, :])


def codes_for(pixel_values, table, mean, std):
    """The uint8 image (HWC) the processor normalised, recovered from its float output.
    Lossless: asserts that looking the codes up in the table reproduces every output bit."""
    codes = np.rint((pixel_values.astype(np.float64) * np.array(std)[:, None, None]
                     + np.array(mean)[:, None, None]) * 255).clip(0, 255).astype(np.uint8)
    rebuilt = np.stack([table[c][codes[c]] for c in range(3)])
    assert rebuilt.tobytes() == pixel_values.astype(np.float32).tobytes(), "codes are not lossless"
    return np.ascontiguousarray(codes.transpose(1, 2, 0))


def write_preprocess(root):
    """tests/fixtures/preprocess/reference.safetensors. Tensors (all images decoded with
    load_rgb, arrays HWC uint8 unless said otherwise):
      rgb/{image}                     what PIL decodes
      rgb_scaled/gray16.png           the engine's proper 16->8 bit scaling (PIL clips)
      gray16/values                   gray16.png's stored 16-bit values (U16)
      resize/{image}/{w}x{h}          PIL resize(BICUBIC) of rgb/{image}
      expand/{image}                  expand2square(rgb, MobileVLM's fill)
      pv/{pipeline}/{image}           pixel_values [3, H, W] float32
      table/{pipeline}                [3, 256] float32: the processor's output per uint8 value
      codes/{pipeline}/{image}        real-size pixel_values stored losslessly as the uint8
                                      image the processor normalised: pixel_values[c, y, x]
                                      == table[c][codes[y, x, c]] exactly (checked here);
                                      the meta names the tensor holding them, which may be
                                      a resize/ tensor holding the same bytes.
    """
    from safetensors.numpy import save_file

    images_dir = os.path.join(root, "images")
    out = os.path.join(root, "preprocess")
    os.makedirs(out, exist_ok=True)
    tensors, by_bytes = {}, {}

    def put(name, arr):
        arr = np.ascontiguousarray(arr)
        tensors[name] = arr
        if arr.dtype == np.uint8:
            by_bytes.setdefault((arr.shape, arr.tobytes()), name)

    meta = {"images": {}, "pipelines": {}, "real": []}
    small, real = pipelines()
    for name, (fill, processor) in {**small, **real}.items():
        put(f"table/{name}", normalisation_table(processor))
        size = processor.size
        meta["pipelines"][name] = {
            "pad_fill": fill,
            "size": {k: getattr(size, k) for k in ("shortest_edge", "height", "width")
                     if getattr(size, k) is not None},
            "crop_size": ({"height": processor.crop_size.height, "width": processor.crop_size.width}
                          if processor.do_center_crop else None),
            "rescale_factor": processor.rescale_factor,
            "image_mean": list(processor.image_mean), "image_std": list(processor.image_std),
            "resample": int(processor.resample),
        }

    for name in ALL_IMAGES:
        img = load_rgb(os.path.join(images_dir, name))
        w, h = img.size
        put(f"rgb/{name}", np.array(img))
        sizes = resize_sizes(w, h)
        info = {"width": w, "height": h, "resize": [list(s) for s in sizes]}
        if name == "gray16.png":
            put("rgb_scaled/gray16.png", scaled_gray16_rgb())
            put("gray16/values", gray16_values())
            # Resize and process the engine's (scaled) decode, not PIL's clipped one.
            img = Image.fromarray(scaled_gray16_rgb(), "RGB")
            info["processed_from"] = "rgb_scaled/gray16.png"
        for tw, th in sizes:
            put(f"resize/{name}/{tw}x{th}", np.array(img.resize((tw, th), Image.BICUBIC)))
        if w != h and max(w, h) <= 64:  # small ones suffice for the offsets
            put(f"expand/{name}", np.array(expand2square(img, small["mobilevlm_28"][0])))
        for pname, (fill, processor) in small.items():
            put(f"pv/{pname}/{name}", run_pipeline(fill, processor, img).astype(np.float32))
        meta["images"][name] = info

    # Real sizes for the two model-fixture images, plus the plain resizes to 336 and 384
    # of the square one (which hold the same bytes as its real-size codes).
    for name in ALL_IMAGES[:2]:
        img = load_rgb(os.path.join(images_dir, name))
        if img.size[0] == img.size[1]:
            for s in (336, 384):
                put(f"resize/{name}/{s}x{s}", np.array(img.resize((s, s), Image.BICUBIC)))
                meta["images"][name]["resize"].append([s, s])
        for pname, (fill, processor) in real.items():
            pv = run_pipeline(fill, processor, img)
            table = tensors[f"table/{pname}"]
            codes = codes_for(pv, table, processor.image_mean, processor.image_std)
            key = by_bytes.get((codes.shape, codes.tobytes()))
            if key is None:
                key = f"codes/{pname}/{name}"
                put(key, codes)
            meta["real"].append({"pipeline": pname, "image": name, "codes": key,
                                 "shape": list(pv.shape)})

    # One metadata key: several would be written in a random order (see gen_fixtures.py).
    save_file(tensors, os.path.join(out, "reference.safetensors"),
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    return out


def write(root):
    out = os.path.join(root, "images")
    write_images(out)
    write_preprocess(root)
    return out
