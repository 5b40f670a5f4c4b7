"""PyTorch `torch.save` checkpoints (pytorch_model.bin) for the restricted pickle reader.

Writes tests/fixtures/pytorch/:
  single/pytorch_model.bin      a state dict as torch.save writes it (zip, protocol 2):
                                f32/f16/bf16, 2-D/1-D/0-D, int64 and bool, a transposed
                                view, a strided slice, tensors sharing one storage at
                                different offsets, an nn.Parameter, a tied (same object) tensor
  expected.safetensors          the same tensors, contiguous, as safetensors (the truth)
  sharded/                      the same state dict split over two files +
                                pytorch_model.bin.index.json
  protocol4.bin                 the same state dict pickled with protocol 4 (FRAME, MEMOIZE,
                                STACK_GLOBAL, SHORT_BINUNICODE)
  wrapped.bin                   {"state_dict": <state dict>, "epoch": 3} (a training checkpoint)
  zip64.bin                     single/pytorch_model.bin re-zipped by Python's zipfile with
                                ZIP64 records forced, unaligned data and another top folder
  malicious.bin                 a torch.save zip whose pickle calls os.system (through
                                GLOBAL posix.system + REDUCE) to create MARKER in the
                                current directory
  legacy.bin                    the pre-1.6 non-zip format (_use_new_zipfile_serialization=False)
  truncated.bin                 the first half of single/pytorch_model.bin

Deterministic: torch.save of the same tensors under the same names gives the same bytes
(the archive folder comes from the file name, storage keys count up from 0). The legacy
format names storages by memory address, so those keys are rewritten to small numbers.
"""

import io
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict

import torch
from safetensors.torch import save_file

SEED = 4321
# Created (relative to the working directory) if anything ever runs malicious.bin's pickle.
MARKER = "pocketvlm-pickle-ran.marker"


def state_dict():
    g = torch.Generator().manual_seed(SEED)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    linear = randn(6, 8)
    shared = randn(32)  # one storage, several views at different offsets
    wide = randn(4, 9).to(torch.bfloat16)
    sd = OrderedDict()
    sd["linear.weight"] = linear  # 2-D f32
    sd["linear.bias"] = randn(6)  # 1-D f32
    sd["norm.weight"] = randn(8).half()  # 1-D f16
    sd["embed.weight"] = randn(10, 8).to(torch.bfloat16)  # 2-D bf16
    sd["f16.matrix"] = randn(4, 5).half()  # 2-D f16
    sd["scale"] = torch.tensor(0.625, dtype=torch.bfloat16)  # 0-D bf16
    sd["scalar.f32"] = torch.tensor(-2.5)  # 0-D f32
    sd["position_ids"] = torch.arange(7, dtype=torch.int64).unsqueeze(0)  # int64
    sd["mask"] = torch.tensor([True, False, True])  # bool
    sd["transposed.weight"] = randn(5, 3).t()  # non-contiguous: strides (1, 3)
    sd["sliced.weight"] = wide[:, 2:7]  # non-contiguous with a storage offset
    sd["shared.a"] = shared[0:8].view(2, 4)  # shared storage, offset 0
    sd["shared.b"] = shared[10:22]  # shared storage, offset 10, contiguous
    sd["shared.c"] = shared[20:32:2]  # shared storage, offset 20, stride 2
    sd["param"] = torch.nn.Parameter(randn(4))  # saved through _rebuild_parameter
    sd["tied.weight"] = linear  # the same tensor object twice (tied embeddings)
    return sd


def expected_tensors(sd):
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def save(obj, path, **kw):
    torch.save(obj, path, **kw)
    return path


def rezip_zip64(src, dst, folder):
    """Rewrites a torch zip with Python's zipfile, forcing ZIP64 records everywhere they can
    go (local and central extra fields, the ZIP64 end of central directory and locator)."""
    saved = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 0, 0
    try:
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                name = folder + "/" + info.filename.split("/", 1)[1]
                out = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                out.compress_type = zipfile.ZIP_STORED
                zout.writestr(out, zin.read(info.filename))
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = saved
    with open(dst, "rb") as f:
        data = f.read()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data, "no ZIP64 end records written"


class RunsShell:
    """Pickles as a call of os.system (which pickle records as `posix system`)."""

    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))


def check_malicious_really_runs(path):
    """The fixture must be dangerous for real: a plain pickle.loads of its data.pkl creates
    the marker (run in a throwaway directory)."""
    with zipfile.ZipFile(path) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])
    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "data.pkl")
        with open(blob, "wb") as f:
            f.write(pkl)
        # persistent_load is needed for the tensor that comes first; return a dummy.
        code = ("import pickle,sys\n"
                "class U(pickle.Unpickler):\n"
                "    def persistent_load(self, pid): return None\n"
                "    def find_class(self, m, n):\n"
                "        if m.startswith('torch'): return lambda *a, **k: None\n"
                "        return super().find_class(m, n)\n"
                "U(open(sys.argv[1], 'rb')).load()\n")
        subprocess.run([sys.executable, "-c", code, blob], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        assert os.path.exists(os.path.join(tmp, MARKER)), "malicious pickle did not run"


def legacy_save(sd, path):
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    # Storage keys are memory addresses: renumber them so the file is deterministic. Each
    # key is a BINUNICODE string; the records are self-delimiting, so lengths may change.
    keys = sorted(set(re.findall(rb"X(.)\x00\x00\x00(\d{6,20})q", data)))
    for i, (n, key) in enumerate(keys):
        assert n[0] == len(key)
        new = str(i).encode()
        data = data.replace(b"X" + n + b"\x00\x00\x00" + key,
                            b"X" + bytes([len(new)]) + b"\x00\x00\x00" + new)
    with open(path, "wb") as f:
        f.write(data)
    loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def write(root):
    out = os.path.join(root, "pytorch")
    os.makedirs(os.path.join(out, "single"), exist_ok=True)
    os.makedirs(os.path.join(out, "sharded"), exist_ok=True)
    sd = state_dict()
    expected = expected_tensors(sd)
    save_file(expected, os.path.join(out, "expected.safetensors"),
              metadata={"meta": json.dumps({"names": list(sd)}, sort_keys=True)})

    single = save(sd, os.path.join(out, "single", "pytorch_model.bin"))
    loaded = torch.load(single, weights_only=True)
    assert all(torch.equal(loaded[k], expected[k]) for k in sd)

    names = list(sd)
    half = len(names) // 2
    shards = [names[:half], names[half:]]
    weight_map = {}
    total = 0
    for i, part in enumerate(shards):
        fn = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        save(OrderedDict((k, sd[k]) for k in part), os.path.join(out, "sharded", fn))
        for k in part:
            weight_map[k] = fn
            total += expected[k].numel() * expected[k].element_size()
    with open(os.path.join(out, "sharded", "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")

    save(sd, os.path.join(out, "protocol4.bin"), pickle_protocol=4)
    save({"state_dict": sd, "epoch": 3}, os.path.join(out, "wrapped.bin"))
    rezip_zip64(single, os.path.join(out, "zip64.bin"), "checkpoint")
    loaded = torch.load(os.path.join(out, "zip64.bin"), weights_only=True)
    assert all(torch.equal(loaded[k], expected[k]) for k in sd)

    malicious = OrderedDict([("linear.weight", sd["linear.weight"]), ("payload", RunsShell())])
    save(malicious, os.path.join(out, "malicious.bin"))
    check_malicious_really_runs(os.path.join(out, "malicious.bin"))

    legacy_save(OrderedDict([("linear.bias", sd["linear.bias"])]), os.path.join(out, "legacy.bin"))

    with open(single, "rb") as f:
        data = f.read()
    with open(os.path.join(out, "truncated.bin"), "wb") as f:
        f.write(data[: len(data) // 2])
    return out


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    print(write(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "fixtures")))
