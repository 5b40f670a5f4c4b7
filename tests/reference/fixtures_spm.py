"""A small SentencePiece BPE tokenizer trained the way LLaMA's was (byte fallback, digits
split, identity normalisation, dummy prefix), for the MobileVLM and Phi-3 fixtures.
Written to tests/fixtures/spm/tokenizer.model."""

import io
import os

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


def corpus():
    """Deterministic sentences: a linear congruential walk over the word list."""
    # No newlines or tabs: like LLaMA's vocabulary, they must go through byte fallback.
    lines = [SYSTEM, "USER: <image> What is in the image? ASSISTANT:",
             "Ünïcödé café naïve Москва 東京 😀 1234567890 3.14159",
             "fn main() { println!(\"{}\", x); }"]
    s = 12345
    for _ in range(3000):
        words = []
        for _ in range(6 + s % 9):
            s = (s * 1103515245 + 12345) % (1 << 31)
            words.append(WORDS[s % len(WORDS)])
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + ("?" if s % 3 == 0 else "."))
    return lines


def write(root):
    out = os.path.join(root, "spm")
    os.makedirs(out, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model,
        model_type="bpe", vocab_size=1000, character_coverage=1.0, byte_fallback=True,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True, split_by_unicode_script=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, max_sentencepiece_length=16, minloglevel=2)
    path = os.path.join(out, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path
