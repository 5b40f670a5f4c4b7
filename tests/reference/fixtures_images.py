"""Test images, drawn deterministically with PIL (no randomness from the OS or numpy
global state), and PIL/transformers references for the Rust image module.

write(root) writes:
- tests/fixtures/images/: the two images the model fixtures use (photo_wide.jpg,
  shapes_square.png — their bytes must not change), small images of every odd kind the
  decoder must handle, JPEGs of every layout the JPEG decoder must match PIL on (jpeg_*),
  and two crafted PNG headers that claim huge sizes.
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


# ---------------------------------------------------------------------------------------
# JPEG test images. PIL's encoder writes baseline and progressive 4:4:4 / 4:2:2 / 4:2:0,
# grey, RGB and CMYK; the small writer below makes the rest: other sampling factors,
# Adobe YCCK, one sequential scan per component, and progressive scripts that stop before
# every coefficient is refined (which makes libjpeg smooth blocks). The engine's decoder
# must give PIL's pixels for all of them, to the bit.

_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])

# Annex K.1's example quantisation tables (natural order), scaled like libjpeg's quality.
_Q_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_Q_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32)


def _scaled_quant(base, quality):
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255).astype(np.int64)


def _ac_table(short):
    """All 162 AC symbols of 8-bit JPEG: the `short` ones get codes of 2..8 bits (two per
    length), the others 16 bits (the decoder's long-code path)."""
    rest = sorted({0x00, 0xF0, *((r << 4) | s for r in range(16) for s in range(1, 11))} - set(short))
    counts = [0] * 16
    for i in range(len(short)):
        counts[1 + i // 2] += 1
    counts[15] = len(rest)
    return counts, list(short) + rest


# Huffman tables (counts of code lengths 1..16, symbols). DC slot 0 is Annex K.3's
# luminance table, slot 1 a flat 4-bit one.
_DC_TABLES = [([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], list(range(12))),
              ([0, 0, 0, 12] + [0] * 12, list(range(12)))]
_AC_TABLES = [_ac_table([0x00, 0x01, 0x02, 0x11, 0x03, 0x21, 0x04, 0x12, 0x31, 0x05, 0x41, 0x51,
                         0xF0, 0x06]),
              _ac_table([0x01, 0x00, 0x11, 0x02, 0x21, 0x03, 0x31, 0x12, 0xF0, 0x04])]


def _huffman_codes(table):
    counts, symbols = table
    codes, code, k = {}, 0, 0
    for length, n in enumerate(counts, start=1):
        for _ in range(n):
            codes[symbols[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


_DC_CODES = [_huffman_codes(t) for t in _DC_TABLES]
_AC_CODES = [_huffman_codes(t) for t in _AC_TABLES]
_DCT = np.array([[(np.sqrt(0.125) if u == 0 else 0.5) * np.cos((2 * x + 1) * u * np.pi / 16)
                  for x in range(8)] for u in range(8)])


class _BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = self.n = 0

    def put(self, value, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)  # byte stuffing
                self.acc = self.n = 0

    def put_value(self, v, size):
        if size:
            self.put(v if v >= 0 else v + (1 << size) - 1, size)

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)


def _segment(marker, payload):
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _adobe(transform):
    return _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, transform))


def _write_jpeg(width, height, planes, factors, quality=85, ids=None, app=b"", jfif=True,
                mode="baseline", restart=0, scans=None):
    """Encodes component planes (uint8, at least at each component's resolution) with the
    given (h, v) sampling factors. mode: "baseline" (one interleaved scan), "multiscan"
    (one sequential scan per component) or "progressive" with `scans`, a list of
    (component indices, Ss, Se, Ah, Al) — DC first/refinement and AC first scans only."""
    n = len(planes)
    ids = ids or list(range(1, n + 1))
    max_h = max(h for h, _ in factors)
    max_v = max(v for _, v in factors)
    mcus_x, mcus_y = -(-width // (8 * max_h)), -(-height // (8 * max_v))
    qtables = [_scaled_quant(_Q_LUMA, quality), _scaled_quant(_Q_CHROMA, quality)]
    comps = []
    for i, (plane, (h, v)) in enumerate(zip(planes, factors)):
        cw, ch = -(-width * h // max_h), -(-height * v // max_v)
        pw, ph = mcus_x * h * 8, mcus_y * v * 8
        padded = np.pad(plane[:ch, :cw].astype(np.float64), ((0, ph - ch), (0, pw - cw)), mode="edge")
        blocks = padded.reshape(ph // 8, 8, pw // 8, 8).transpose(0, 2, 1, 3) - 128
        coefs = np.einsum("ux,abxy,vy->abuv", _DCT, blocks, _DCT).reshape(ph // 8, pw // 8, 64)
        table = min(i, 1)
        quantised = np.rint(coefs / qtables[table]).astype(np.int64)[:, :, _ZIGZAG]
        comps.append(dict(h=h, v=v, blocks=quantised, wb=-(-cw // 8), hb=-(-ch // 8), table=table))

    out = bytearray(b"\xFF\xD8")
    if jfif:
        out += _segment(0xE0, b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += app
    for slot in range(min(n, 2)):
        out += _segment(0xDB, bytes([slot]) + bytes(int(x) for x in qtables[slot][_ZIGZAG]))
    sof = 0xC2 if mode == "progressive" else 0xC0
    out += _segment(sof, struct.pack(">BHHB", 8, height, width, n) + b"".join(
        bytes([ids[i], (c["h"] << 4) | c["v"], c["table"]]) for i, c in enumerate(comps)))
    for slot in range(2):
        for cls, tables in ((0, _DC_TABLES), (1, _AC_TABLES)):
            counts, symbols = tables[slot]
            out += _segment(0xC4, bytes([(cls << 4) | slot] + counts) + bytes(symbols))
    if restart:
        out += _segment(0xDD, struct.pack(">H", restart))
    if mode == "baseline":
        scans = [(list(range(n)), 0, 63, 0, 0)]
    elif mode == "multiscan":
        scans = [([i], 0, 63, 0, 0) for i in range(n)]
    for scan in scans:
        out += _jpeg_scan(comps, ids, scan, mcus_x, mcus_y, restart, mode == "progressive")
    return bytes(out + b"\xFF\xD9")


def _jpeg_scan(comps, ids, scan, mcus_x, mcus_y, restart, progressive):
    members, ss, se, ah, al = scan
    header = bytes([len(members)]) + b"".join(
        bytes([ids[i], (comps[i]["table"] << 4) | comps[i]["table"]]) for i in members)
    out = bytearray(_segment(0xDA, header + bytes([ss, se, (ah << 4) | al])))
    if len(members) > 1:  # interleaved: every block of the MCU grid, dummies included
        mcus = [[(i, my * comps[i]["v"] + y, mx * comps[i]["h"] + x)
                 for i in members for y in range(comps[i]["v"]) for x in range(comps[i]["h"])]
                for my in range(mcus_y) for mx in range(mcus_x)]
    else:  # one block per MCU, over the component's own blocks
        c = comps[members[0]]
        mcus = [[(members[0], by, bx)] for by in range(c["hb"]) for bx in range(c["wb"])]
    bits, pred = _BitWriter(), {}
    for m, mcu in enumerate(mcus):
        if restart and m and m % restart == 0:
            bits.flush()
            out += bits.out + bytes([0xFF, 0xD0 + (m // restart - 1) % 8])
            bits, pred = _BitWriter(), {}
        for ci, by, bx in mcu:
            zz, t = comps[ci]["blocks"][by, bx], comps[ci]["table"]
            if ss == 0 and ah == 0:
                dc = int(zz[0]) >> al
                diff = dc - pred.get(ci, 0)
                pred[ci] = dc
                size = abs(diff).bit_length()
                bits.put(*_DC_CODES[t][size])
                bits.put_value(diff, size)
            elif ss == 0:
                bits.put((int(zz[0]) >> al) & 1, 1)
            if not progressive:
                _jpeg_ac(bits, zz, 1, 63, 0, t)
            elif ss > 0:
                assert ah == 0, "AC refinement is not implemented"
                _jpeg_ac(bits, zz, ss, se, al, t)
    bits.flush()
    return bytes(out + bits.out)


def _jpeg_ac(bits, zz, ss, se, al, t):
    run = 0
    for k in range(ss, se + 1):
        v = int(zz[k])
        v = (abs(v) >> al) * (1 if v >= 0 else -1)
        if v == 0:
            run += 1
            continue
        while run > 15:
            bits.put(*_AC_CODES[t][0xF0])
            run -= 16
        size = abs(v).bit_length()
        bits.put(*_AC_CODES[t][(run << 4) | size])
        bits.put_value(v, size)
        run = 0
    if run:
        bits.put(*_AC_CODES[t][0x00])  # end of block


def _planes(img, factors, space="ycc"):
    """Component planes of an RGB image, each subsampled (nearest) to its resolution."""
    a = np.array(img).astype(np.float64)
    height, width = a.shape[:2]
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    channels = {"ycc": [y, cb, cr], "rgb": [r, g, b],
                "ycck": [y, cb, cr, (r * 0.7 + 40) % 256],
                "cmyk": [255 - r, 255 - g, 255 - b, (r + g + b) % 256]}[space]
    max_h = max(h for h, _ in factors)
    max_v = max(v for _, v in factors)
    out = []
    for c, (h, v) in zip(channels, factors):
        cw, ch = -(-width * h // max_h), -(-height * v // max_v)
        rows, cols = np.arange(ch) * height // ch, np.arange(cw) * width // cw
        out.append(np.clip(np.rint(c[rows][:, cols]), 0, 255).astype(np.uint8))
    return out


def _custom_jpeg(width, height, factors, seed, space="ycc", **kw):
    def write(path):
        img = _photo_like(width, height, seed)
        with open(path, "wb") as f:
            f.write(_write_jpeg(width, height, _planes(img, factors, space), factors, **kw))
    return write


def _pil_jpeg(width, height, seed, mode="RGB", **kw):
    def write(path):
        _photo_like(width, height, seed).convert(mode).save(path, **kw)
    return write


def _damaged_jpeg(path):
    """Bytes of the entropy-coded data flipped (the file still ends properly): libjpeg
    decodes garbage coefficients without failing, and PIL returns its pixels. Some of them,
    times the large quantisers of quality 50, overflow 16 bits, where libjpeg-turbo's x86
    SIMD IDCT (what PIL runs) gives other pixels than its C code."""
    data = bytearray(_write_jpeg(45, 37, _planes(_photo_like(45, 37, 31), [(2, 2), (1, 1), (1, 1)]),
                                 [(2, 2), (1, 1), (1, 1)], quality=50))
    pos = data.rfind(b"\xFF\xDA") + 52
    for _ in range(6):
        # Away from 0xFF bytes: a new or broken marker would make libjpeg fail instead.
        while data[pos - 1] == 0xFF or data[pos] in (0x00, 0xFF):
            pos += 1
        data[pos] = 0xFF - data[pos]
        pos += 97
    with open(path, "wb") as f:
        f.write(data)


def _bad_restart_jpeg(path):
    """Restart markers out of sequence, and one missing: libjpeg resynchronises (with a
    warning) and leaves the lost intervals blank."""
    data = bytearray(_write_jpeg(45, 37, _planes(_photo_like(45, 37, 32), [(1, 1)] * 3),
                                 [(1, 1)] * 3, restart=2))
    rst = [i for i in range(len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]
    data[rst[1] + 1] = 0xD5          # RST5 where RST1 belongs
    del data[rst[4]:rst[4] + 2]      # RST4 dropped
    data[rst[8] + 1] = 0xD0 + (data[rst[8] + 1] - 0xD0 + 7) % 8  # an earlier number
    with open(path, "wb") as f:
        f.write(data)


_ALL_FACTORS_420 = [(2, 2), (1, 1), (1, 1)]

# name -> writer. Sizes are odd on purpose: partial MCUs at the right and bottom edges.
JPEG_IMAGES = {
    # PIL's encoder.
    "jpeg_444.jpg": _pil_jpeg(37, 29, 21, quality=90, subsampling=0),
    "jpeg_422.jpg": _pil_jpeg(37, 29, 22, quality=90, subsampling=1),
    "jpeg_420.jpg": _pil_jpeg(45, 37, 23, quality=75, subsampling=2),
    "jpeg_420_q100.jpg": _pil_jpeg(45, 37, 24, quality=100, subsampling=2),
    # Chroma 2 samples wide: libjpeg replicates instead of filtering.
    "jpeg_420_3px_wide.jpg": _pil_jpeg(3, 20, 25, quality=90, subsampling=2),
    "jpeg_1x1.jpg": _pil_jpeg(1, 1, 26, quality=90),
    "jpeg_progressive.jpg": _pil_jpeg(45, 37, 27, quality=85, progressive=True),
    "jpeg_progressive_444.jpg": _pil_jpeg(37, 29, 28, quality=92, subsampling=0, progressive=True),
    "jpeg_restarts.jpg": _pil_jpeg(45, 37, 29, quality=85, restart_marker_blocks=3),
    "jpeg_progressive_restarts.jpg": _pil_jpeg(45, 37, 30, quality=85, progressive=True,
                                               restart_marker_rows=1),
    "jpeg_grey.jpg": _pil_jpeg(37, 29, 33, mode="L", quality=85),
    "jpeg_grey_progressive.jpg": _pil_jpeg(37, 29, 34, mode="L", quality=85, progressive=True),
    "jpeg_rgb_adobe.jpg": _pil_jpeg(37, 29, 35, quality=90, keep_rgb=True),
    # The writer above.
    "jpeg_440.jpg": _custom_jpeg(37, 29, [(1, 2), (1, 1), (1, 1)], 41),
    "jpeg_411.jpg": _custom_jpeg(45, 29, [(4, 1), (1, 1), (1, 1)], 42),
    "jpeg_mixed_factors.jpg": _custom_jpeg(45, 37, [(2, 2), (1, 2), (2, 1)], 43),
    "jpeg_h3.jpg": _custom_jpeg(37, 29, [(3, 1), (1, 1), (1, 1)], 44),
    "jpeg_chroma_over_luma.jpg": _custom_jpeg(37, 29, [(1, 1), (2, 2), (2, 2)], 45),
    "jpeg_multiscan.jpg": _custom_jpeg(45, 37, _ALL_FACTORS_420, 46, mode="multiscan", restart=2),
    "jpeg_rgb_ids.jpg": _custom_jpeg(37, 29, [(1, 1)] * 3, 47, space="rgb", ids=[82, 71, 66],
                                     jfif=False),
    "jpeg_ycck.jpg": _custom_jpeg(37, 29, [(2, 2), (1, 1), (1, 1), (2, 2)], 48, space="ycck",
                                  app=_adobe(2), jfif=False),
    "jpeg_cmyk_subsampled.jpg": _custom_jpeg(37, 29, [(2, 1), (1, 1), (1, 1), (2, 1)], 49,
                                             space="cmyk", app=_adobe(0), jfif=False),
    # Progressive scripts that leave coefficients unknown: libjpeg smooths blocks.
    "jpeg_prog_dc_only.jpg": _custom_jpeg(45, 37, _ALL_FACTORS_420, 50, mode="progressive",
                                          scans=[([0, 1, 2], 0, 0, 0, 1), ([0, 1, 2], 0, 0, 1, 0)]),
    "jpeg_prog_low_ac.jpg": _custom_jpeg(45, 37, _ALL_FACTORS_420, 51, mode="progressive", scans=[
        ([0, 1, 2], 0, 0, 0, 0), ([0], 1, 2, 0, 0), ([1], 1, 5, 0, 0), ([2], 1, 63, 0, 0)]),
    "jpeg_prog_unrefined.jpg": _custom_jpeg(45, 37, _ALL_FACTORS_420, 52, mode="progressive",
                                            restart=3, scans=[
        ([0, 1, 2], 0, 0, 0, 0), ([0], 1, 63, 0, 2), ([1], 1, 63, 0, 1), ([2], 1, 63, 0, 1)]),
    # Damaged data that libjpeg decodes with warnings.
    "jpeg_damaged.jpg": _damaged_jpeg,
    "jpeg_bad_restarts.jpg": _bad_restart_jpeg,
}

# JPEGs PIL cannot decode either, and the error the engine gives.
JPEG_ERRORS = {
    # Sampling factors 2 and 1 of 3: not integral ratios (libjpeg: "fractional sampling not
    # implemented yet").
    "jpeg_fractional_sampling.jpg": (_custom_jpeg(37, 29, [(3, 1), (2, 1), (1, 1)], 53), "Unsupported"),
}


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
    for name, writer in JPEG_IMAGES.items():
        writer(os.path.join(out, name))
    for name, (writer, _) in JPEG_ERRORS.items():
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
      rgb/{jpeg}                      what PIL decodes, for every JPEG test image
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

    # JPEG decoding: PIL's pixels for every test JPEG (the engine must match them exactly),
    # and the JPEGs PIL cannot decode either.
    meta["jpegs"] = []
    for name in ["photo_wide.jpg", "exif_rot6.jpg", "cmyk.jpg", *JPEG_IMAGES]:
        if f"rgb/{name}" not in tensors:
            put(f"rgb/{name}", np.array(load_rgb(os.path.join(images_dir, name))))
        meta["jpegs"].append(name)
    meta["jpeg_errors"] = {}
    for name, (_, kind) in JPEG_ERRORS.items():
        try:
            load_rgb(os.path.join(images_dir, name))
        except OSError:
            meta["jpeg_errors"][name] = kind
        else:
            raise AssertionError(f"PIL decodes {name}")

    # One metadata key: several would be written in a random order (see gen_fixtures.py).
    save_file(tensors, os.path.join(out, "reference.safetensors"),
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    return out


def write(root):
    out = os.path.join(root, "images")
    write_images(out)
    write_preprocess(root)
    return out
