#!/usr/bin/env python3
"""Builds the inputs of bench/tokenizer/bench_tokenizer.cpp (not committed: large).

Writes into OUT_DIR:
  tokenizer.json  ~150k-token byte-level BPE with GLM's pre-tokenizer and added
                  tokens: a BPE trained on English (so English encodes with
                  realistic merges) extended with synthetic merges up to the
                  size of GLM's vocabulary (so loading costs what a real one does)
  english.txt     English prose (Python's pydoc topics and license texts)
  expected_ids.json  the reference library's ids for english.txt, so the
                  benchmark also checks it encodes a big vocabulary exactly
  reference_timing.json  the reference library's own encode speed on the text

Usage: python3 tools/tokenizer/make_bench_tokenizer.py OUT_DIR [MAX_TOKEN_CHARS]
MAX_TOKEN_CHARS (default 24) bounds the synthetic tokens; 64 makes a ~20 MB
file, as large as the biggest GLM tokenizer.json, for a pessimistic load time.
"""

import glob
import json
import os
import random
import sys
import time

from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tokenizer_fixtures as fixtures  # noqa: E402

TARGET_VOCAB = 151_329  # GLM's regular vocabulary; its added tokens follow


def english_text():
    import pydoc_data.topics
    parts = list(pydoc_data.topics.topics.values())
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="ignore") as handle:
                parts.append(handle.read())
    return "\n\n".join(parts)


def extend_vocabulary(model, target, max_chars, seed=5):
    """Adds merges of existing tokens until the vocabulary has `target` entries."""
    rng = random.Random(seed)
    vocab = model["vocab"]
    tokens = list(vocab)
    next_id = max(vocab.values()) + 1
    while len(vocab) < target:
        left, right = rng.choice(tokens), rng.choice(tokens)
        merged = left + right
        if merged in vocab or len(merged) > max_chars:
            continue
        vocab[merged] = next_id
        next_id += 1
        tokens.append(merged)
        model["merges"].append([left, right])


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/glm_tokenizer_bench"
    max_token_chars = int(sys.argv[2]) if len(sys.argv) > 2 else 24
    os.makedirs(out_dir, exist_ok=True)
    text = english_text()
    with open(os.path.join(out_dir, "english.txt"), "w", encoding="utf-8") as handle:
        handle.write(text)

    base = fixtures.train_base(text + fixtures.training_text(paragraphs=3000), 32_000)
    data = json.loads(base.to_str())
    extend_vocabulary(data["model"], TARGET_VOCAB, max_token_chars)
    tokenizer = fixtures.add_glm_tokens(Tokenizer.from_str(json.dumps(data)))
    path = os.path.join(out_dir, "tokenizer.json")
    tokenizer.save(path, pretty=False)
    tokenizer = Tokenizer.from_file(path)

    start = time.perf_counter()
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    seconds = time.perf_counter() - start
    with open(os.path.join(out_dir, "expected_ids.json"), "w") as handle:
        json.dump(ids, handle)
    start = time.perf_counter()
    Tokenizer.from_file(path)
    load_seconds = time.perf_counter() - start
    with open(os.path.join(out_dir, "reference_timing.json"), "w") as handle:
        json.dump({"encode_mb_per_s": len(text.encode()) / seconds / 1e6, "load_s": load_seconds,
                   "vocab_size": tokenizer.get_vocab_size()}, handle)
    print(f"{path}: vocab {tokenizer.get_vocab_size()}, {os.path.getsize(path) / 1e6:.1f} MB; "
          f"text {len(text.encode()) / 1e6:.2f} MB; reference encode "
          f"{len(text.encode()) / seconds / 1e6:.2f} MB/s, load {load_seconds:.2f} s")


if __name__ == "__main__":
    main()
