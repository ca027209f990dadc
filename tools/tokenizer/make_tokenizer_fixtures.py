#!/usr/bin/env python3
"""Builds the reference data for the C++ tokenizer tests (tests/text/fixtures/).

The C++ tokenizer must encode and decode exactly like Hugging Face `tokenizers`
(version pinned in tools/requirements-tokenizer.txt). Real GLM tokenizer.json
files are too large to commit, so this script trains small byte-level BPE
tokenizers with GLM's pre-tokenizer and special-token layout, writes each
variant's tokenizer.json, and records what the reference library returns for a
corpus of hard inputs into expected.json.

Usage:  pip install -r tools/requirements-tokenizer.txt
        python3 tools/tokenizer/make_tokenizer_fixtures.py [--out tests/text/fixtures]
The output is deterministic for a given `tokenizers` version.
"""

import argparse
import json
import os
import random

import tokenizers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        normalizers, pre_tokenizers, processors, trainers)

GLM_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# GLM's layout: the regular vocabulary first, then these added tokens in this
# order. The chat-role and mask tokens are special (skipped by
# skip_special_tokens); the reasoning and tool-call markers are not, as in the
# released GLM-4.5 files, so they survive decoding.
GLM_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("[MASK]", True), ("[gMASK]", True), ("[sMASK]", True),
    ("<sop>", True), ("<eop>", True), ("<|system|>", True), ("<|user|>", True),
    ("<|assistant|>", True), ("<|observation|>", True), ("<|begin_of_image|>", True),
    ("<|end_of_image|>", True), ("<think>", False), ("</think>", False),
    ("<tool_call>", False), ("</tool_call>", False), ("<tool_response>", False),
    ("</tool_response>", False), ("<arg_key>", False), ("</arg_key>", False),
    ("<arg_value>", False), ("</arg_value>", False), ("/nothink", False),
]

ENGLISH_WORDS = (
    "the of and to in is was that for on are with as by be at this have from or one had not "
    "but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time "
    "could no make than first been its who now people my made over did down only way find use "
    "may water long little very after words called just where most know get through back much "
    "before go good new write our used me man too any day same right look think also around "
    "another came come work three word must because does part even place well such here take "
    "why things help put years different away again off went old number great tell men say "
    "small every found still between name should home big give air line set own under read "
    "last never us left end along while might next sound below saw something thought both few "
    "those always looked show large often together asked house world going want school important "
    "until form food keep children feet land side without boy once animals life enough took "
    "tokenizer inference engine model weights tensor matrix attention expert router layer "
    "quantization throughput latency benchmark streaming decoder encoder vocabulary merges"
).split()

CONTRACTIONS = ["don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "can't",
                "DON'T", "IT'S", "WE'RE", "THEY'VE", "I'M", "YOU'LL", "HE'D", "it'S", "We'Re",
                "they'VE", "i'M", "You'Ll", "she'D"]

CODE_SNIPPETS = [
    "def forward(self, x: torch.Tensor) -> torch.Tensor:\n    return self.proj(x) * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "#include <vector>\nstd::vector<int32_t> ids = tok.encode(\"hello\");\n",
    "if __name__ == \"__main__\":\n    main()\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "let x = vec![1, 2, 3];\nprintln!(\"{:?}\", x);\n",
    "    \n        x = {'a': 1, \"b\": [2, 3]}  # comment\r\n",
]

CJK_SENTENCES = [
    "我们今天讨论一下大语言模型的推理引擎。", "混合专家模型的路由器选择前八个专家。",
    "東京は日本の首都です。", "これはテストの文章です、よろしくお願いします。",
    "한국어 문장도 포함되어야 합니다.", "서울은 대한민국의 수도입니다.",
    "中文，标点符号！还有“引号”和（括号）。",
]

OTHER_SCRIPTS = [
    "مرحبا بالعالم، هذا اختبار للنص العربي.", "اللغة العربية ١٢٣ ٤٥٦",
    "Привет, мир! Это тест.", "Ελληνικά κείμενα εδώ.", "हिन्दी में पाठ।",
    "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️", "🚀 launch at 10:30 🎉🎉",
]


def training_text(seed=1234, paragraphs=1500):
    """A mixed-language corpus so that merges cover every category we test."""
    rng = random.Random(seed)
    parts = []
    for _ in range(paragraphs):
        kind = rng.random()
        if kind < 0.55:
            words = [rng.choice(ENGLISH_WORDS) for _ in range(rng.randint(5, 25))]
            if rng.random() < 0.4:
                words.insert(rng.randrange(len(words)), rng.choice(CONTRACTIONS))
            sentence = " ".join(words)
            sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?", ",", ";"])
            parts.append(sentence)
        elif kind < 0.7:
            parts.append(rng.choice(CODE_SNIPPETS))
        elif kind < 0.82:
            parts.append(rng.choice(CJK_SENTENCES))
        elif kind < 0.92:
            parts.append(rng.choice(OTHER_SCRIPTS))
        else:
            number = str(rng.randint(0, 10 ** rng.randint(1, 12)))
            parts.append(f"{number} + {rng.randint(0, 999)} = {rng.random():.4f}")
        parts.append(rng.choice([" ", "\n", "\n\n", "  ", "\t", " \n", "\r\n", "    "]))
    return "".join(parts)


def test_corpus():
    """Inputs whose encodings the C++ side must reproduce."""
    corpus = [
        "", " ", "  ", "\n", "\n\n", "  \n\n  \t", "\t\t", "\r\n", " \r\n \r\n", "a", "A",
        "Hello world", "Hello, world! How are you today?", " leading space", "trailing space ",
        "The quick brown fox jumps over the lazy dog.",
        "don't DON'T Don'T it's IT'S it'S we're WE'RE We'Re they've THEY'VE I'm I'M i'm "
        "you'll YOU'LL You'Ll he'd HE'D 's 'S 'll 'LL 'Ll 'lL",
        "'s't're've'm'll'd", "x's y'T z'RE", "''s ''''", "rock'n'roll", "O'Reilly's",
        "12345678901234567890", "3.14159 2,718 1e10 0x1F 007", "٣٤٥٦ ١٢٣", "Ⅻ ² ½",
        "year 2024: 15% of 1000 = 150",
        "我们今天讨论一下大语言模型的推理引擎。", "東京は日本の首都です。", "한국어 문장도 포함되어야 합니다.",
        "中英mixed文本with数字123和emoji😀",
        "مرحبا بالعالم، هذا اختبار للنص العربي.", "Привет, мир!", "हिन्दी में पाठ।",
        "😀", "👨‍👩‍👧‍👦", "🇯🇵🇺🇸", "👍🏽 ❤️ 🚀🎉", "a😀b😀c",
        "def forward(self, x):\n    return x\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "x = {'a': 1, \"b\": [2, 3]}  # comment\r\n", "    indented\n        more\n",
        "a" * 300, " " * 300, "\n" * 100, " \n" * 50, "ab " * 200, "😀" * 50, "1" * 100,
        "   \n\n\n   x", "a  b   c    d", "a\u00a0b\u3000c\u2028d\u0085e\u180ef\u200bg",
        "\u1680\u1680x", "tab\tseparated\tvalues", "mixed \t \n \r spaces",
        "[gMASK]<sop><|system|>You are helpful.<|user|>Hi<|assistant|>Hello!",
        "text<|user|>more text", "<think>reasoning</think>answer", "<tool_call>f<arg_key>k</arg_key>"
        "<arg_value>v</arg_value></tool_call>", "<|user|><|user|>", "<|user|", "|user|>", "<<|user|>>",
        "hi /nothink", "/nothinking", " <|assistant|> ", "<|endoftext|>", "[MASK] and [sMASK]",
        "e\u0301 café cafe\u0301 \u212b \u00c5 A\u030a \uac00 \u1100\u1161", "ﬁ ﬀ ẞ ß ſ K",
        "\x00\x01\x02 control \x7f chars", "\ufeffBOM", "\U0010ffff\U000e0001",
        "Mixed CASE Words AND contractions SHOULDN'T Break",
        # Added tokens with lstrip / rstrip / single_word / normalized flags (glm_flags).
        "a  <lstrip>  b", "x<rstrip>   y\n", "  <both>  ", "<both><both>", " \u3000<lstrip>\u00a0",
        "<rstrip> <lstrip>", "<rstrip>\n\n<|user|>", "word words sword word. (word) _word word_ 1word",
        "café cafe\u0301 CAFÉ cafés", "e\u0301té ét\u00e9 e\u0301t\u00e9", "中文 中文字 a中文 中文。",
        "Ġspace and Ġspaces", "<lstrip><rstrip><both>word",
    ]
    rng = random.Random(99)
    pool = ("ab 中文😀'sS\n\t 12 Ab'LL <|user|> é" + "\u0301\u00a0،" + "xyz")
    pieces = ["<lstrip>", "<rstrip>", "<both>", "word", "café", "cafe\u0301", "e\u0301té", "中文", " ", "  ",
              "\n", "\t", "a", "[gMASK]", "<think>", "Ġspace", "\u3000", "."]
    for _ in range(40):
        corpus.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    for _ in range(30):
        corpus.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 40))))
    # Random code points from many scripts and categories, in runs.
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
              (0x590, 0x6FF), (0x900, 0x97F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x3000, 0x30FF),
              (0x4E00, 0x4E80), (0xAC00, 0xAC80), (0xFF00, 0xFF60), (0x1F300, 0x1F64F),
              (0x1F900, 0x1F9FF), (0x9, 0xD), (0x1D400, 0x1D4FF)]
    for _ in range(60):
        chars = []
        for _ in range(rng.randint(1, 30)):
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)) * rng.choice([1, 1, 1, 2, 5]))
        corpus.append("".join(chars))
    return corpus


NFC_PROBES = [
    "e\u0301", "A\u030a\u0301", "\u1100\u1161\u11a8", "\uac00\u11a8", "\u212b", "\u0344",
    "a\u0328\u0301", "\u0958\u0959", "\u1e9b\u0323", "\u00c5\u0327", "ǖ", "\u0f73",
    "\U0001d15e", "\u2126 ohm", "plain ascii", "\u0041\u0301\u0316", "\u05b8\u05b9\u05b1",
    "\u0061\u0315\u0300\u05ae\u0300\u0062", "\u00e9\u0000e\u0301x",
]


# Byte strings that are not UTF-8: the C++ encoder replaces each maximal invalid
# subsequence with U+FFFD (as Rust's String::from_utf8_lossy and Python's
# errors="replace" do) and then encodes the result.
INVALID_UTF8_INPUTS = [
    b"\xff", b"abc\x80def", b"\xe4\xb8", b"\xe4\xb8x", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80\xf0",
    b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xfe\xfe\xff", b"caf\xe9", b"\xc3",
    b"\x80\x80\x80 hello \xbf", b"\xe0\x80\x80", b"\xef\xbf\xbe ok",
]


# (pre_tokenizer config, inputs): the reference's pieces for each are recorded
# so the C++ regex translation and split behaviors are checked directly.
REGEX_PROBES = [
    r"\s", r"\S+", r"[^\s\p{L}]+", r"\w+", r"\W", r"\d+", r"\h+", r"\bis\b", r"\Bs",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)", r"(?i)kelvin|é|σ", r"a$", r"^b", r"(?m:a.b)", r"x*", r"\p{Lu}\p{Ll}*",
    r"\u00e9+", r"[[:alpha:]]+", r"[[:punct:]]+", r"[[:space:]]+", r"[[:upper:][:digit:]]+", r"[[:alnum:]]+", r"\s+(?!\S)", r"(?<=a)b", r"[\p{Han}]+", r"\X",
]
PROBE_TEXTS = [
    "Hello world, it's a TEST of the split: axxbcx 123 ٣٤ ²",
    "a\u00a0b\u3000c\u2028d\u0085e\u180ef\u200bg\u1680h\x1ci\tj\nk\rl\x0bm\x0cn",
    "e\u0301 caf\u00e9 x_y a\u203fb \u2160\u2161 ß ſ STRASSE straße \u212a ΣΑΣ σς É $+<=>^`|~ -()!",
    "a\nab\nb a.b a\nb\r\nab", "中文字符和日本語のテキスト 한국어", "👍🏽 ❤️ 👨‍👩‍👧",
    "  \n\n  \t  x   \n", "DON'T it'S We'LL i'M 'd 'D", "",
]
SPLIT_BEHAVIORS = ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]


def pre_tokenizer_cases():
    configs = []
    for pattern in REGEX_PROBES:
        configs.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False))
    for behavior in SPLIT_BEHAVIORS:
        for invert in (False, True):
            configs.append(pre_tokenizers.Split(Regex(r"\s+|x*|[,.]"), behavior=behavior, invert=invert))
            configs.append(pre_tokenizers.Split(", ", behavior=behavior, invert=invert))
    configs.append(pre_tokenizers.Split(Regex(GLM_SPLIT_REGEX), behavior="isolated", invert=False))
    for prefix in (False, True):
        for use_regex in (False, True):
            configs.append(pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=use_regex))
    configs.append(glm_pre_tokenizer())
    configs.append(pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
        pre_tokenizers.Split(Regex("Ġ"), behavior="merged_with_next", invert=False)]))
    cases = []
    for config in configs:
        config_json = json.loads(Tokenizer_with_pre_tokenizer(config))
        cases.append({"config": config_json,
                      "splits": [[piece for piece, _ in config.pre_tokenize_str(text)] for text in PROBE_TEXTS]})
    return {"texts": PROBE_TEXTS, "cases": cases}


def Tokenizer_with_pre_tokenizer(config):
    """The JSON the reference writes for a pre-tokenizer (via a throwaway tokenizer)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = config
    return json.dumps(json.loads(tok.to_str())["pre_tokenizer"])


def glm_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])


def train_base(text, vocab_size, pre_tokenizer=None, normalizer=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or glm_pre_tokenizer()
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer)
    return tok


def add_glm_tokens(tok):
    tok.add_tokens([AddedToken(content, special=special, normalized=False)
                    for content, special in GLM_ADDED_TOKENS])
    return tok


def with_model_edit(tok, edit):
    """Re-creates `tok` after `edit(model_json)`; added tokens must come after."""
    data = json.loads(tok.to_str())
    edit(data["model"])
    return Tokenizer.from_str(json.dumps(data))


def merges_as_strings(model):
    model["merges"] = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]


def merges_as_pairs(model):
    model["merges"] = [pair.split(" ") if isinstance(pair, str) else pair for pair in model["merges"]]


def add_whole_words(model):
    """Vocab entries that merges cannot reach, so ignore_merges changes results."""
    next_id = max(model["vocab"].values()) + 1
    for word in ["Ġtokenization", "Ġunbelievable", "Ġquantization", "Hello", "Ġworld!",
                 "ĠHello", "Ġinference", "Ġthroughput"]:
        if word not in model["vocab"]:
            model["vocab"][word] = next_id
            next_id += 1
    model["ignore_merges"] = True


# Edits applied to a variant's saved tokenizer.json before it is reloaded.
FILE_EDITS = {"glm_strings": merges_as_strings}


def subword_bpe():
    """A BPE with unk_token, fuse_unk, continuing_subword_prefix and
    end_of_word_suffix, built by hand (the trainer's alphabet order is not
    deterministic with these options): ASCII characters, then left-to-right
    merges spelling common English words."""
    vocab = {"<unk>": 0}

    def add(token):
        vocab.setdefault(token, len(vocab))

    for code in range(0x21, 0x7F):
        for token in (chr(code), "##" + chr(code), chr(code) + "</w>", "##" + chr(code) + "</w>"):
            add(token)
    merges = []
    for word in ENGLISH_WORDS[:120]:
        pieces = [word[0]] + ["##" + c for c in word[1:]]
        pieces[-1] += "</w>"
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append((merged, piece))
            merged += piece[2:]
            add(merged)
    unique_merges = list(dict.fromkeys(merges))
    return models.BPE(vocab=vocab, merges=unique_merges, unk_token="<unk>", fuse_unk=True,
                      continuing_subword_prefix="##", end_of_word_suffix="</w>")


def build_variants(text):
    variants = {}

    base = train_base(text, 2000)
    variants["glm_pairs"] = add_glm_tokens(with_model_edit(base, merges_as_pairs))
    # `save` writes merges as pairs whatever was loaded, so the legacy "a b"
    # spelling is produced by editing the saved file (see FILE_EDITS).
    variants["glm_strings"] = add_glm_tokens(with_model_edit(base, merges_as_pairs))
    variants["glm_ignore_merges"] = add_glm_tokens(with_model_edit(base, add_whole_words))

    nfc = train_base(text, 1500, normalizer=normalizers.NFC())
    variants["glm_nfc"] = add_glm_tokens(with_model_edit(nfc, merges_as_pairs))

    seq = train_base(text, 1200, normalizer=normalizers.Sequence([normalizers.NFC()]))
    seq = add_glm_tokens(with_model_edit(seq, merges_as_pairs))
    gmask, sop = seq.token_to_id("[gMASK]"), seq.token_to_id("<sop>")
    seq.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B:1",
                                      special_tokens=[("[gMASK]", gmask), ("<sop>", sop)]),
    ])
    variants["glm_template"] = seq

    flags = train_base(text, 1000, normalizer=normalizers.NFC())
    flags = add_glm_tokens(with_model_edit(flags, merges_as_pairs))
    flags.add_tokens([
        AddedToken("<lstrip>", lstrip=True, special=True, normalized=False),
        AddedToken("<rstrip>", rstrip=True, special=True, normalized=False),
        AddedToken("<both>", lstrip=True, rstrip=True, special=False, normalized=False),
        AddedToken("word", single_word=True, special=False, normalized=False),
        AddedToken("caf\u00e9", normalized=True, special=False),
        AddedToken("e\u0301t\u00e9", normalized=False, special=False),
        AddedToken("中文", single_word=True, normalized=True, special=False),
        AddedToken("Ġspace", special=False, normalized=False),
    ])
    variants["glm_flags"] = flags

    gpt2 = train_base(text, 1200, pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=True,
                                                                         use_regex=True))
    gpt2 = add_glm_tokens(with_model_edit(gpt2, merges_as_pairs))
    gpt2.post_processor = processors.ByteLevel(trim_offsets=True)
    variants["bytelevel_regex"] = gpt2

    # Not byte-level: characters outside the (limited) alphabet become <unk>,
    # subwords carry a prefix/suffix, and with no decoder tokens are joined by spaces.
    plain = Tokenizer(subword_bpe())
    plain.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="removed", invert=False),
        pre_tokenizers.Split(Regex(GLM_SPLIT_REGEX), behavior="isolated", invert=False)])
    variants["unk_subword_no_decoder"] = add_glm_tokens(plain)

    no_decoder = add_glm_tokens(with_model_edit(base, merges_as_pairs))
    no_decoder.decoder = None
    variants["glm_no_decoder"] = no_decoder
    return variants


def decode_cases(tok, corpus):
    """Id sequences to decode: real encodings, their prefixes (cut through UTF-8
    characters), lone bytes that are not UTF-8, and special tokens."""
    cases = []
    for text in corpus:
        ids = tok.encode(text, add_special_tokens=True).ids
        if ids:
            cases.append(ids)
    byte_token = {}
    for token, token_id in tok.get_vocab().items():
        if len(token) == 1:
            byte_token[token] = token_id
    byte_decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    ids_by_byte = {byte_decoder[t]: i for t, i in byte_token.items() if t in byte_decoder}
    if len(ids_by_byte) == 256:  # a byte-level vocabulary
        for prefix_source in ["😀👍🏽中文", "é東京", "مرحبا"]:
            ids = [ids_by_byte[b] for b in prefix_source.encode("utf-8")]
            for cut in range(1, len(ids) + 1):
                cases.append(ids[:cut])
        cases.append([ids_by_byte[0xE4], ids_by_byte[ord("a")]])
        cases.append([ids_by_byte[0xFF], ids_by_byte[0xC0], ids_by_byte[0xAF]])
        cases.append([ids_by_byte[0xF0], ids_by_byte[0x9F], ids_by_byte[ord("x")], ids_by_byte[0x80]])
        cases.append([ids_by_byte[0xED], ids_by_byte[0xA0], ids_by_byte[0x80]])
    else:
        ids_by_byte = {ord("a"): tok.token_to_id("a"), 0xE4: tok.token_to_id("a"), 0xB8: tok.token_to_id("a"),
                       0xAD: tok.token_to_id("a")}
    special = [tok.token_to_id(content) for content, _ in GLM_ADDED_TOKENS]
    cases.append(special)
    cases.append([special[2], ids_by_byte[0xE4], special[7], ids_by_byte[0xB8], ids_by_byte[0xAD]])
    cases.append([tok.get_vocab_size() + 1000, ids_by_byte[ord("a")]])
    return cases


def bytes_to_unicode():
    """GPT-2's byte -> printable character table, as the ByteLevel pre-tokenizer uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "text", "fixtures"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    text = training_text()
    corpus = test_corpus()
    expected = {"tokenizers_version": tokenizers.__version__, "variants": {},
                "pre_tokenizers": pre_tokenizer_cases(),
                "nfc": [{"text": t, "nfc": normalizers.NFC().normalize_str(t)} for t in NFC_PROBES],
                "lossy_utf8": [{"bytes_hex": raw.hex(), "text": raw.decode("utf-8", errors="replace")}
                               for raw in INVALID_UTF8_INPUTS]}
    for name, tok in build_variants(text).items():
        file_name = f"{name}.json"
        path = os.path.join(args.out, file_name)
        tok.save(path, pretty=False)
        if name in FILE_EDITS:
            with open(path, encoding="utf-8") as saved:
                data = json.load(saved)
            FILE_EDITS[name](data["model"])
            with open(path, "w", encoding="utf-8") as edited:
                json.dump(data, edited, ensure_ascii=False, separators=(",", ":"))
        # Reload so that what we record is what the saved file produces.
        tok = Tokenizer.from_file(path)
        encodings = []
        for sample in corpus:
            encodings.append({"text": sample,
                              "ids": tok.encode(sample, add_special_tokens=False).ids,
                              "ids_with_special": tok.encode(sample, add_special_tokens=True).ids})
        for raw in INVALID_UTF8_INPUTS:
            repaired = raw.decode("utf-8", errors="replace")
            encodings.append({"bytes_hex": raw.hex(),
                              "ids": tok.encode(repaired, add_special_tokens=False).ids,
                              "ids_with_special": tok.encode(repaired, add_special_tokens=True).ids})
        decodes = []
        for ids in decode_cases(tok, corpus):
            decodes.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                            "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
        expected["variants"][name] = {"file": file_name, "encode": encodings, "decode": decodes}

    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as out:
        json.dump(expected, out, ensure_ascii=False, indent=None, separators=(",", ":"))
        out.write("\n")


if __name__ == "__main__":
    main()
