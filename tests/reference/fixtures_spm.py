"""Tokenizers of checkpoints without a tokenizer.json, and what Python makes of them.

tests/fixtures/spm/ — a small SentencePiece BPE trained the way LLaMA's was (byte fallback,
digits split, identity normalisation, dummy prefix), for the MobileVLM and Phi-3 fixtures:
  tokenizer.model        the model (other fixtures depend on its exact bytes: keep `train`)
  tokenizer_config.json  a slow `LlamaTokenizer` config as MobileVLM/LLaMA checkpoints ship it
  cases.json             texts → ids / decoded text, for several tokenizer configs; raw
                         SentencePiece encode/decode; decode-only id sequences

tests/fixtures/spm/gpt2_bpe/ — a byte-level BPE in the GPT-2 file layout (vocab.json, merges.txt,
added_tokens.json, special_tokens_map.json, tokenizer_config.json; no tokenizer.json), like
the Phi-2 tokenizer of Imp, with cases.json from transformers (which builds it with the
`tokenizers` library).

The ground truth for MobileVLM is transformers 4's slow, sentencepiece-backed
`LlamaTokenizer`, which transformers 5 no longer has (its LlamaTokenizer is the
tokenizers-backed one). `SlowLlamaTokenizer` below re-implements it on the `sentencepiece`
library, following transformers v4.40.2 (`models/llama/tokenization_llama.py` and
`tokenization_utils.py`; v4.41–v4.57 are the same in every rule used here):

  encode (`tokenizer(text).input_ids`):
  1. legacy is true when `legacy` is absent or null. When legacy is false the SentencePiece
     model is reloaded with `normalizer_spec.add_dummy_prefix = false`, every "▁" in the text
     becomes " ", and (add_prefix_space, default true) one "▁" is put in front of the text.
  2. The text is split on every added token (`added_tokens_decoder` plus the special
     tokens), longest match first, by transformers' `Trie.split`. A token's `lstrip` /
     `rstrip` strip the whitespace of its neighbour chunks; `single_word` glues it to a
     neighbour that is not separated by a space.
  3. Each remaining chunk is `sp.encode(chunk)` (legacy: with the model's own dummy prefix,
     so a chunk after `</s>` starts with "▁"). Legacy false: a chunk that starts with "▁" or
     " " is encoded as `sp.encode(unk_token + chunk)` with the first
     `len(sp.encode(unk_token))` pieces dropped (this keeps its leading space as a piece);
     other chunks get no dummy prefix. If the result starts with a lone "▁" followed by a
     special token, that "▁" is dropped.
  4. Pieces become ids through the added tokens first, then `sp.piece_to_id`; BOS is put in
     front when `add_bos_token` (default true), EOS at the end when `add_eos_token`.

  decode (`tokenizer.decode(ids, skip_special_tokens)`):
  1. Ids of special tokens (bos/eos/unk/sep/pad/cls/mask/additional) are dropped when
     skipping; ids become added-token contents or SentencePiece pieces.
  2. Non-special added tokens (and additional special tokens past the SentencePiece
     vocabulary) stand alone; the runs between them go through `convert_tokens_to_string`,
     and the parts are joined with " " (`spaces_between_special_tokens` is true in `_decode`).
  3. `convert_tokens_to_string`: with add_prefix_space, one leading "▁" of the first piece is
     removed; special tokens are written as their text (legacy: preceded by " " unless at
     the start or after another special token); other runs go through `sp.decode(pieces)`.
  4. `clean_up_tokenization_spaces` (default false for LlamaTokenizer) removes spaces before
     punctuation.

`python fixtures_spm.py --check-transformers4` (in a venv with transformers<5 and
sentencepiece) compares this re-implementation with the real slow LlamaTokenizer on every
case; it is how the port was validated.
"""

import copy
import io
import json
import os
import re
import sys

import sentencepiece as spm

WORDS = ("the a an of to in is on what which who where when how why color colour image "
         "picture photo shows show describe there are many one two three four five red green "
         "blue yellow white black circle square triangle star cat dog car tree house person "
         "left right top bottom middle next behind above below large small big tiny chat "
         "between curious user artificial intelligence assistant gives helpful detailed polite "
         "answers questions capital France Paris city country answer question please thank "
         "you hello world code function return value number text word").split()

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def corpus(seed=12345, n=3000):
    """Deterministic sentences: a linear congruential walk over the word list."""
    # No newlines or tabs: like LLaMA's vocabulary, they must go through byte fallback.
    lines = [SYSTEM, "USER: <image> What is in the image? ASSISTANT:",
             "Ünïcödé café naïve Москва 東京 😀 1234567890 3.14159",
             "fn main() { println!(\"{}\", x); }"]
    s = seed
    for _ in range(n):
        words = []
        for _ in range(6 + s % 9):
            s = (s * 1103515245 + 12345) % (1 << 31)
            words.append(WORDS[s % len(WORDS)])
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + ("?" if s % 3 == 0 else "."))
    return lines


def train():
    """The tokenizer.model bytes. Other fixtures depend on them: do not change."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model,
        model_type="bpe", vocab_size=1000, character_coverage=1.0, byte_fallback=True,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True, split_by_unicode_script=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, max_sentencepiece_length=16, minloglevel=2)
    return model.getvalue()


def dump_json(path, obj):
    """Indented JSON with each list of numbers on one line (ids stay readable and small)."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


# --------------------------------------------------------------------------------------------
# transformers 4's slow LlamaTokenizer, re-implemented (see the module docstring)

SPIECE_UNDERLINE = "\u2581"
SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                 "mask_token")
LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


class AddedTok:
    def __init__(self, content, special=False, lstrip=False, rstrip=False, single_word=False,
                 normalized=True):
        self.content, self.special = content, special
        self.lstrip, self.rstrip, self.single_word = lstrip, rstrip, single_word
        self.normalized = normalized


def added_tok(value, special):
    """A config value (a string, or an AddedToken dict) as transformers 4 turns it into one."""
    if value is None:
        return None
    if isinstance(value, str):
        return AddedTok(value, special=special, normalized=not special)
    return AddedTok(value["content"], special=value.get("special", special),
                    lstrip=value.get("lstrip", False), rstrip=value.get("rstrip", False),
                    single_word=value.get("single_word", False),
                    normalized=value.get("normalized", True))


class Trie:
    """transformers.tokenization_utils.Trie (its split is reproduced step by step)."""

    def __init__(self):
        self.data = {}

    def add(self, word):
        if not word:
            return
        ref = self.data
        for char in word:
            ref = ref.setdefault(char, {})
        ref[""] = 1

    def split(self, text):
        states = {}
        offsets = [0]
        skip = 0
        for current, current_char in enumerate(text):
            if skip and current < skip:
                continue
            to_remove = set()
            reset = False
            for start, trie_pointer in list(states.items()):
                if "" in trie_pointer:
                    for lookstart, looktrie_pointer in states.items():
                        if lookstart > start:
                            break
                        elif lookstart < start:
                            lookahead_index = current + 1
                            end = current + 1
                        else:
                            lookahead_index = current
                            end = current
                        next_char = text[lookahead_index] if lookahead_index < len(text) else None
                        if "" in looktrie_pointer:
                            start = lookstart
                            end = lookahead_index
                            skip = lookahead_index
                        while next_char in looktrie_pointer:
                            looktrie_pointer = looktrie_pointer[next_char]
                            lookahead_index += 1
                            if "" in looktrie_pointer:
                                start = lookstart
                                end = lookahead_index
                                skip = lookahead_index
                            if lookahead_index == len(text):
                                break
                            next_char = text[lookahead_index]
                    offsets.append(start)
                    offsets.append(end)
                    reset = True
                    break
                elif current_char in trie_pointer:
                    states[start] = trie_pointer[current_char]
                else:
                    to_remove.add(start)
            if reset:
                states = {}
            else:
                for start in to_remove:
                    del states[start]
            if current >= skip and current_char in self.data:
                states[current] = self.data[current_char]
        for start, trie_pointer in states.items():
            if "" in trie_pointer:
                offsets.append(start)
                offsets.append(len(text))
                break
        offsets.append(len(text))
        tokens, start = [], 0
        for end in offsets:
            if start >= end:
                continue
            tokens.append(text[start:end])
            start = end
        return tokens


def model_pb2():
    """sentencepiece's protobuf module, or transformers 4's copy when that is loaded (the two
    cannot both register sentencepiece_model.proto)."""
    name = "transformers.utils.sentencepiece_model_pb2_new"
    if name in sys.modules:
        return sys.modules[name]
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2


def flag(config, key, default):
    """transformers 4 stores config values as attributes and tests their truth: absent means
    the default, null means false."""
    return bool(config[key]) if key in config else default


class SlowLlamaTokenizer:
    def __init__(self, model_bytes, config):
        legacy = config.get("legacy")
        self.legacy = True if legacy is None else bool(legacy)
        self.add_prefix_space = flag(config, "add_prefix_space", True)
        self.add_bos_token = flag(config, "add_bos_token", True)
        self.add_eos_token = flag(config, "add_eos_token", False)
        self.clean_up = flag(config, "clean_up_tokenization_spaces", False)
        self.sp = spm.SentencePieceProcessor()
        if self.legacy:
            self.sp.LoadFromSerializedProto(model_bytes)
        else:
            proto = model_pb2().ModelProto.FromString(model_bytes)
            proto.normalizer_spec.add_dummy_prefix = False
            self.sp.LoadFromSerializedProto(proto.SerializeToString())
        self.vocab_size = self.sp.get_piece_size()

        self.added_decoder = {}
        for index, value in (config.get("added_tokens_decoder") or {}).items():
            self.added_decoder[int(index)] = added_tok(value, special=False)
        by_content = {t.content: t for t in self.added_decoder.values()}

        # Special-token attributes; from_pretrained swaps in the added_tokens_decoder entry of
        # the same content.
        self.special = {}
        for attr in SPECIAL_ATTRS:
            tok = added_tok(config.get(attr, LLAMA_DEFAULTS.get(attr)), special=True)
            if tok is not None:
                self.special[attr] = by_content.get(tok.content, tok)
        self.additional = [by_content.get(t.content, t) for t in
                           (added_tok(v, special=True) for v in
                            config.get("additional_special_tokens") or [])]
        self.all_special_tokens = []
        for tok in list(self.special.values()) + self.additional:
            if tok.content not in self.all_special_tokens:
                self.all_special_tokens.append(tok.content)

        # PreTrainedTokenizer.__init__ → _add_tokens(special tokens not yet added).
        self.added_encoder = {t.content: i for i, t in self.added_decoder.items()}
        vocab = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_encoder)
        new_idx = len(vocab)
        added = 0
        for tok in list(self.special.values()) + self.additional:
            if tok.content in self.added_encoder or not tok.content:
                continue
            tok = copy.copy(tok)
            tok.special = True
            if tok.content not in vocab:
                index = new_idx + added
                vocab[tok.content] = index
                added += 1
            else:
                index = vocab[tok.content]
            self.added_decoder[index] = tok
            self.added_encoder[tok.content] = index
        self.trie = Trie()
        for tok in self.added_decoder.values():
            self.trie.add(tok.content)
        self.all_special_ids = [self.token_to_id(t) for t in self.all_special_tokens]
        self.unk_token = self.special["unk_token"].content if "unk_token" in self.special else ""

    def token_to_id(self, token):
        if token in self.added_encoder:
            return self.added_encoder[token]
        return self.sp.piece_to_id(token)

    def id_to_token(self, index):
        if index in self.added_decoder:
            return self.added_decoder[index].content
        return self.sp.id_to_piece(index)

    # PreTrainedTokenizer.tokenize
    def _base_tokenize(self, text):
        tokens = self.trie.split(text)
        for i in range(len(tokens)):
            token = tokens[i]
            if token not in self.added_encoder:
                continue
            tok = self.added_decoder[self.added_encoder[token]]
            left = tokens[i - 1] if i > 0 else None
            right = tokens[i + 1] if i < len(tokens) - 1 else None
            if tok.rstrip and right:
                tokens[i + 1] = right.lstrip()
            if tok.lstrip and left:
                tokens[i - 1] = left.rstrip()
            if tok.single_word and left and left[-1] != " ":
                tokens[i - 1] += token
                tokens[i] = ""
            elif tok.single_word and right and right[0] != " ":
                tokens[i + 1] = token + tokens[i + 1]
                tokens[i] = ""
        out = []
        for token in tokens:
            if not token:
                continue
            if token in self.added_encoder:
                out.append(token)
            else:
                out.extend(self._tokenize(token))
        return out

    # LlamaTokenizer.tokenize / _tokenize
    def tokenize(self, text):
        if self.legacy or len(text) == 0:
            return self._base_tokenize(text)
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        tokens = self._base_tokenize(text)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def _tokenize(self, text):
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp.encode(text, out_type=str)
        tokens = self.sp.encode(self.unk_token + text, out_type=str)
        unk_len = len(self.sp.encode(self.unk_token))
        return tokens[unk_len:] if len(tokens) >= unk_len else tokens

    def encode(self, text, add_special_tokens=True):
        ids = [self.token_to_id(t) for t in self.tokenize(text)]
        if add_special_tokens:
            if self.add_bos_token:
                ids = [self.token_to_id(self.special["bos_token"].content)] + ids
            if self.add_eos_token:
                ids = ids + [self.token_to_id(self.special["eos_token"].content)]
        return ids

    # PreTrainedTokenizer._decode / LlamaTokenizer.convert_tokens_to_string
    def decode(self, ids, skip_special_tokens=False):
        tokens = [self.id_to_token(i) for i in ids
                  if not (skip_special_tokens and i in self.all_special_ids)]
        legacy_added = {t for t in self.added_encoder if t not in self.all_special_tokens}
        legacy_added |= {t.content for t in self.additional
                         if self.token_to_id(t.content) >= self.vocab_size}
        sub_texts, current = [], []
        for token in tokens:
            if token in legacy_added:
                if current:
                    string = self._tokens_to_string(current)
                    if string:
                        sub_texts.append(string)
                    current = []
                sub_texts.append(token)
            else:
                current.append(token)
        if current:
            sub_texts.append(self._tokens_to_string(current))
        text = " ".join(sub_texts)
        if self.clean_up:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                         (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def _tokens_to_string(self, tokens):
        tokens = list(tokens)
        if tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            tokens[0] = tokens[0][1:]
        current, out, prev_is_special = [], "", False
        for i, token in enumerate(tokens):
            if token in self.all_special_tokens:
                if not prev_is_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp.decode(current) + token
                prev_is_special = True
                current = []
            else:
                if (prev_is_special and i == 1 and self.add_prefix_space
                        and not token.startswith(SPIECE_UNDERLINE)):
                    out += " "
                current.append(token)
                prev_is_special = False
        return out + self.sp.decode(current)


# --------------------------------------------------------------------------------------------
# Fixture contents

VICUNA = (SYSTEM + " USER: What colour is the sky? ASSISTANT: Blue.</s>USER: And the grass? "
          "ASSISTANT:")

TEXTS = [
    "Hello world",
    "What is the capital of France?",
    VICUNA,
    SYSTEM + " USER: <image>\nDescribe the image. ASSISTANT:",
    "<s>USER: hi</s>",
    "Hello </s> world",
    "</s></s><s>",
    "</s>",
    "<unk> is not <unk>known",
    "line one\nline two\n\nthree\ttab\r\nend\n",
    "\nstarts with a newline",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple   spaces   inside",
    " ",
    "   ",
    "Ünïcödé café naïve Москва 東京 😀",
    "大阪 🎉👍🏽 ∑ 한국어 👨‍👩‍👧 ﷺ",
    "numbers 1234567890 and 3.14159, 2024-01-01",
    "",
    "\u2581literal lower one eighth \u2581\u2581blocks\u2581",
    "fn main() { println!(\"{}\", x); }",
    "ideographic\u3000space and\u00a0no-break",
    "replacement \ufffd char",
    "x",
]

# Id sequences decoded on their own (what a model may generate): stray byte pieces, invalid
# UTF-8, leading "▁" pieces, unk, specials in the middle.
DECODE_ONLY_PIECES = [
    ["<0xE6>", "<0x9D>"],                      # a truncated character
    ["▁Hello", "<0xE6>", "<0x9D>", "<0xB1>", "▁world"],
    ["<0xFF>", "<0xC0>", "<0x80>", "▁ok"],     # never valid UTF-8
    ["<0x0A>", "▁Hello"],                      # a byte piece first: its "▁" stays
    ["▁", "▁Hello"],
    ["▁", "▁", "Hello"],
    ["<s>", "▁Hello", "</s>", "▁world", "</s>"],
    ["▁Hello", "<unk>", "▁world"],
    ["<unk>", "▁Hello"],
    ["</s>", "▁Blue", "."],
    ["▁Blue", ".", "</s>", "USER", ":"],
]


def variant_configs():
    base = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, c in ((0, "<unk>"), (1, "<s>"), (2, "</s>"))
        },
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    legacy_false = dict(base, legacy=False)
    # Added tokens past the vocabulary, with every AddedToken flag, an EOS at the end, a
    # pad token that is not in the vocabulary, and clean-up of spaces.
    added = copy.deepcopy(base)
    added.update(legacy=False, add_eos_token=True, pad_token="<pad>",
                 clean_up_tokenization_spaces=True,
                 additional_special_tokens=["<image>"])
    added["added_tokens_decoder"].update({
        "1000": {"content": "<image>", "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True},
        "1001": {"content": "<sep>", "lstrip": True, "normalized": False, "rstrip": True,
                 "single_word": False, "special": False},
        "1002": {"content": "wordy", "lstrip": False, "normalized": True, "rstrip": False,
                 "single_word": True, "special": False},
        "1003": {"content": "<im_end>", "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True},
    })
    return {"default": base, "legacy_false": legacy_false, "added": added}


ADDED_TEXTS = [
    "USER: <image>\nWhat is this? ASSISTANT: A cat .</s>",
    "left  <sep>  right",
    "<sep>x<sep>",
    "a wordy sentence, wordy. unwordy wordyish wordy",
    "<im_end><image><pad> done",
    "Is it ? Yes , it 's fine !",
]


def spm_cases(model_bytes):
    configs = variant_configs()
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_bytes)
    texts = {"default": TEXTS, "legacy_false": TEXTS, "added": TEXTS + ADDED_TEXTS}
    variants = {}
    for name, config in configs.items():
        tok = SlowLlamaTokenizer(model_bytes, config)
        cases = []
        for text in texts[name]:
            ids = tok.encode(text, add_special_tokens=False)
            with_special = tok.encode(text, add_special_tokens=True)
            cases.append({
                "text": text,
                "ids": ids,
                "ids_with_special": with_special,
                "decoded": tok.decode(with_special, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
                "decoded_no_bos": tok.decode(ids, skip_special_tokens=False),
            })
        for pieces in DECODE_ONLY_PIECES:
            ids = [sp.piece_to_id(p) for p in pieces]
            cases.append({
                "ids_only": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            })
        variants[name] = {"tokenizer_config": config, "cases": cases}

    # Plain SentencePiece (no transformers rules), for loaders such as GGUF's.
    raw = []
    for text in TEXTS:
        ids = sp.encode(text)
        raw.append({"text": text, "ids": ids, "pieces": sp.encode(text, out_type=str),
                    "decoded": sp.decode(ids)})
    for pieces in DECODE_ONLY_PIECES:
        ids = [sp.piece_to_id(p) for p in pieces]
        raw.append({"ids_only": ids, "decoded": sp.decode(ids)})
    return {"vocab_size": sp.get_piece_size(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
            "unk_id": sp.unk_id(), "variants": variants, "sentencepiece": raw}


# --------------------------------------------------------------------------------------------
# GPT-2 layout byte-level BPE

def bytes_to_unicode():
    """GPT-2's byte → printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_byte_bpe(lines, merges_wanted):
    """A deterministic byte-level BPE: the most frequent adjacent pair is merged first, ties
    broken by the pair's text. GPT-2's pre-tokenizer (from `tokenizers`) splits words."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    counts = {}
    for line in lines:
        for word, _ in pre.pre_tokenize_str(line):
            counts[word] = counts.get(word, 0) + 1
    words = {w: list(w) for w in counts}
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    merges = []
    while len(merges) < merges_wanted:
        pairs = {}
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + counts[w]
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        for w, syms in words.items():
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    return vocab, merges


GPT2_TEXTS = [
    "Hello world",
    " Hello world",
    "What is the capital of France?",
    SYSTEM + " USER: <image>\nWhat is in the image? ASSISTANT:",
    "def f(x):\n    return x\n        pass\n\t\tdone",
    "<|endoftext|>Hello<|endoftext|>",
    "a  <image>  b",
    "  leading and trailing   ",
    "Ünïcödé café naïve Москва 東京 😀 👍🏽",
    "numbers 1234567890 and 3.14159",
    "Hello , world . It 's here !",
    "",
]


def write_gpt2(root, lines):
    out = os.path.join(root, "spm", "gpt2_bpe")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        os.remove(os.path.join(out, name))
    vocab, merges = train_byte_bpe(lines, 300)
    eot = "<|endoftext|>"
    vocab[eot] = len(vocab)
    # Phi-2 style: runs of spaces and tabs, and an image placeholder, past the vocabulary.
    added = ["        ", "    ", "\t\t", "<image>"]
    added_ids = {t: len(vocab) + i for i, t in enumerate(added)}

    def dump(name, obj):
        dump_json(os.path.join(out, name), obj)

    dump("vocab.json", vocab)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    dump("added_tokens.json", added_ids)
    special = {"content": eot, "lstrip": False, "normalized": False, "rstrip": False,
               "single_word": False, "special": True}
    decoder = {str(vocab[eot]): special}
    for t, i in added_ids.items():
        decoder[str(i)] = {"content": t, "lstrip": False, "normalized": t != "<image>",
                           "rstrip": False, "single_word": False, "special": t == "<image>"}
    dump("special_tokens_map.json", {"bos_token": eot, "eos_token": eot, "unk_token": eot})
    dump("tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": eot,
        "clean_up_tokenization_spaces": True,
        "eos_token": eot,
        "model_max_length": 2048,
        "tokenizer_class": "CodeGenTokenizer",
        "unk_token": eot,
    })

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    cases = []
    for text in GPT2_TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        cases.append({
            "text": text,
            "ids": ids,
            "ids_with_special": tok(text, add_special_tokens=True).input_ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    dump("cases.json", {"vocab_size": len(tok), "cases": cases})


def write(root):
    out = os.path.join(root, "spm")
    os.makedirs(out, exist_ok=True)
    model_bytes = train()
    path = os.path.join(out, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model_bytes)
    cases = spm_cases(model_bytes)
    dump_json(os.path.join(out, "tokenizer_config.json"),
              cases["variants"]["default"]["tokenizer_config"])
    dump_json(os.path.join(out, "cases.json"), cases)
    write_gpt2(root, corpus())
    return path


def check_against_transformers4():
    """Compares SlowLlamaTokenizer with the real one (needs transformers<5 installed)."""
    import tempfile

    import transformers
    from transformers import LlamaTokenizer

    assert int(transformers.__version__.split(".")[0]) < 5, "needs transformers 4"
    model_bytes = train()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
            f.write(model_bytes)
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(model_bytes)
        for name, config in variant_configs().items():
            with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
                json.dump(config, f)
            real = LlamaTokenizer.from_pretrained(tmp)
            port = SlowLlamaTokenizer(model_bytes, config)
            id_lists = [[sp.piece_to_id(p) for p in pieces] for pieces in DECODE_ONLY_PIECES]
            for text in TEXTS + ADDED_TEXTS:
                for special in (False, True):
                    a = real(text, add_special_tokens=special).input_ids
                    b = port.encode(text, add_special_tokens=special)
                    if a != b:
                        failures += 1
                        print(f"{name}: encode {text!r} special={special}: {a} != {b}")
                    id_lists.append(a)
            for ids in id_lists:
                for skip in (False, True):
                    a = real.decode(ids, skip_special_tokens=skip)
                    b = port.decode(ids, skip_special_tokens=skip)
                    if a != b:
                        failures += 1
                        print(f"{name}: decode {ids} skip={skip}: {a!r} != {b!r}")
    print(f"transformers {transformers.__version__}: {failures} differences")
    return failures


if __name__ == "__main__":
    if sys.argv[1:] == ["--check-transformers4"]:
        sys.exit(1 if check_against_transformers4() else 0)
    sys.exit("usage: fixtures_spm.py --check-transformers4 (fixtures: gen_fixtures.py)")
