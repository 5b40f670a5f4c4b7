"""Block-format references from gguf-py (the llama.cpp project's Python package), written
to tests/fixtures/kquants/:
- random Q4_K and Q6_K super-blocks and their values as gguf-py dequantises them;
- random f32 rows quantised to Q4_0, Q4_1 and Q8_0 by gguf-py's reference quantisers
  (ports of ggml's `quantize_row_*_ref`), with their dequantised values."""

import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file


def write(root):
    out = os.path.join(root, "kquants")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(99)
    tensors = {}
    for qt, nbytes in [(T.Q4_K, 144), (T.Q6_K, 210)]:
        raw = rng.integers(0, 256, size=(4, 2 * nbytes), dtype=np.uint8)
        # Keep the f16 scales finite and modest: byte patterns that are NaN/Inf as f16 are
        # not what quantisers write.
        for row in raw:
            for b in range(2):
                blk = row[b * nbytes:(b + 1) * nbytes]
                scale_at = [0, 2] if qt == T.Q4_K else [nbytes - 2]
                for at in scale_at:
                    blk[at:at + 2] = np.frombuffer(np.float16(rng.uniform(0.001, 0.05)).tobytes(), np.uint8)
        values = dequantize(raw, qt).astype(np.float32)
        tensors[f"{qt.name}.bytes"] = raw
        tensors[f"{qt.name}.values"] = values
    for qt in [T.Q4_0, T.Q4_1, T.Q8_0]:
        # Rows of mixed scale, with an all-zero block and a block of one repeated value.
        x = rng.normal(0.0, 1.0, size=(4, 256)).astype(np.float32)
        x *= np.float32(10.0) ** rng.integers(-3, 2, size=(4, 1)).astype(np.float32)
        x[1, 32:64] = 0.0
        x[2, 64:96] = np.float32(0.37)
        raw = quantize(x, qt)
        tensors[f"{qt.name}.input"] = x
        tensors[f"{qt.name}.bytes"] = raw
        tensors[f"{qt.name}.values"] = dequantize(raw, qt).astype(np.float32)
    save_file(tensors, os.path.join(out, "reference.safetensors"), metadata={"meta": "gguf-py dequantize"})
