#!/usr/bin/env python3
"""Trains models/glm4moe-tiny-fortunes: a small GLM-4 MoE trained on Debian's fortunes.

Three stages (see models/glm4moe-tiny-fortunes/README.md):

  python3 tools/train_tiny_model.py prepare
      Reads /usr/share/games/fortunes (apt-get install fortunes fortunes-min), splits
      train / held-out (2%), trains the byte-level BPE tokenizer (GLM pre-tokenizer,
      GLM special tokens), writes tokenizer.json, tokenizer_config.json (GLM-4.5 chat
      template), chat_template.jinja, config.json, generation_config.json into the model
      directory, tests/fixtures/trained/heldout.txt, and the tokenized training stream
      (raw fortunes + fortunes rendered as GLM-4.5 chat turns) into build-train/.

  python3 tools/train_tiny_model.py train --out DIR [--steps N]
      Trains Glm4MoeForCausalLM (transformers 5.x) on the stream (GPU if present),
      with a DeepSeek-style aux-loss-free update of e_score_correction_bias, keeps the
      weights with the best held-out loss, and writes DIR/model.safetensors in the Hub
      layout (per-expert gate/up/down, bias F32, the rest BF16) + DIR/train_log.json.

  python3 tools/train_tiny_model.py reference
      Reloads the saved checkpoint in float32 and writes tests/fixtures/trained/
      (held-out perplexity, greedy continuations + logits, a rendered chat prompt).
"""

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "glm4moe-tiny-fortunes"
FIX_DIR = ROOT / "tests" / "fixtures" / "trained"
DATA_DIR = ROOT / "build-train"
FORTUNE_DIR = Path("/usr/share/games/fortunes")
TEMPLATE = Path("/work/shared/reference/chat-templates/glm-4.5-4.6.jinja")

GLM_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
N_REGULAR = 4096
# GLM's added tokens, in GLM's order, after the regular vocabulary. As in the released
# GLM-4.5 files, the role/mask/media tokens are special, the reasoning/tool markers not.
GLM_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("[MASK]", True), ("[gMASK]", True), ("[sMASK]", True),
    ("<sop>", True), ("<eop>", True), ("<|system|>", True), ("<|user|>", True),
    ("<|assistant|>", True), ("<|observation|>", True), ("<|begin_of_image|>", True),
    ("<|end_of_image|>", True), ("<|begin_of_video|>", True), ("<|end_of_video|>", True),
    ("<think>", False), ("</think>", False), ("<tool_call>", False), ("</tool_call>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<arg_key>", False),
    ("</arg_key>", False), ("<arg_value>", False), ("</arg_value>", False), ("/nothink", False),
]
SKIP_FILES = {"ascii-art"}  # pictures, not English text
HELDOUT_FRACTION = 0.02
SEED = 20240917

CONFIG = {
    "architectures": ["Glm4MoeForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": None,  # filled in: [<|endoftext|>, <|user|>, <|observation|>]
    "first_k_dense_replace": 1,
    "head_dim": 48,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 768,
    "max_position_embeddings": 2048,
    "model_type": "glm4_moe",
    "moe_intermediate_size": 192,
    "n_group": 2,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 8,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "num_nextn_predict_layers": 0,
    "pad_token_id": None,  # filled in: <|endoftext|>
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "routed_scaling_factor": 2.5,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.54.0",
    "use_cache": True,
    "use_qk_norm": True,
    "vocab_size": 4160,  # tokenizer has 4121 tokens; padded to a multiple of 64 like GLM
}

GENERIC_PROMPTS = [
    "Tell me something.", "Tell me a fortune.", "Say something wise.", "Give me a quote.",
    "What's on your mind?", "Hello!", "Hi", "Tell me a joke.", "Any advice for today?",
    "Share a thought with me.", "Surprise me.", "What is my fortune?", "Say something funny.",
    "I need some wisdom.", "Cheer me up.", "Tell me something interesting.", "Hello, who are you?",
    "What do you think about life?", "Give me a fortune cookie.", "Can you say something clever?",
]
TOPICS = {
    "computers": "computers", "linux": "Linux", "linuxcookie": "Linux", "debian": "Debian",
    "perl": "programming", "science": "science", "love": "love", "food": "food", "law": "the law",
    "medicine": "medicine", "politics": "politics", "sports": "sports", "work": "work",
    "kids": "kids", "pets": "pets", "literature": "literature", "education": "education",
    "men-women": "men and women", "wisdom": "wisdom", "magic": "magic", "news": "the news",
    "startrek": "Star Trek", "pratchett": "Terry Pratchett", "tao": "the Tao", "drugs": "drugs",
    "songs-poems": "songs and poems", "riddles": "riddles", "people": "people", "art": "art",
    "definitions": "words", "goedel": "logic", "humorists": "humor", "platitudes": "life",
    "paradoxum": "paradoxes", "zippy": "Zippy the Pinhead", "miscellaneous": "anything",
}
TOPIC_PROMPTS = [
    "Tell me something about {t}.", "Say something about {t}.", "Give me a quote about {t}.",
    "What do you think about {t}?", "Tell me a fortune about {t}.",
]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a fortune cookie.",
                  "You are a witty assistant who answers with quotes."]


# ---------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------
def read_fortunes():
    records = []
    for path in sorted(FORTUNE_DIR.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.name in SKIP_FILES:
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        text = text.replace("\r\n", "\n")
        chunk = []
        for line in text.split("\n"):
            if line.strip() == "%":
                body = "\n".join(chunk).strip("\n").rstrip()
                if body.strip():
                    records.append((path.name, body))
                chunk = []
            else:
                chunk.append(line.rstrip())
        body = "\n".join(chunk).strip("\n").rstrip()
        if body.strip():
            records.append((path.name, body))
    return records


def glm_tokenizer(train_texts):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=N_REGULAR, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_texts, trainer)
    assert tok.get_vocab_size() == N_REGULAR, tok.get_vocab_size()
    tok.add_tokens([AddedToken(c, special=s, normalized=False) for c, s in GLM_ADDED_TOKENS])
    return tok


def tokenizer_config(tok, template):
    decoder = {}
    for content, special in GLM_ADDED_TOKENS:
        decoder[str(tok.token_to_id(content))] = {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [c for c, s in GLM_ADDED_TOKENS if s and c != "<|endoftext|>"],
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


_COMPILED = {}


def render(template, messages, **kw):
    import jinja2

    if template in _COMPILED:
        return _COMPILED[template].render(messages=messages, **kw)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda v, ensure_ascii=False, **_: json.dumps(v, ensure_ascii=ensure_ascii)
    _COMPILED[template] = env.from_string(template)
    return _COMPILED[template].render(messages=messages, **kw)


def chat_sample(rng, template, records):
    def prompt(name):
        if name in TOPICS and rng.random() < 0.5:
            return rng.choice(TOPIC_PROMPTS).format(t=TOPICS[name])
        return rng.choice(GENERIC_PROMPTS)

    messages = []
    if rng.random() < 0.1:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for name, body in records:
        messages.append({"role": "user", "content": prompt(name)})
        messages.append({"role": "assistant", "content": body})
    kw = {"enable_thinking": False} if rng.random() < 0.5 else {}
    return render(template, messages, **kw)


def prepare(args):
    import numpy as np

    records = read_fortunes()
    rng = random.Random(SEED)
    order = list(range(len(records)))
    rng.shuffle(order)
    n_held = int(len(records) * HELDOUT_FRACTION)
    held = [records[i] for i in sorted(order[:n_held])]
    train = [records[i] for i in order[n_held:]]
    heldout_text = "".join(body + "\n%\n" for _, body in held)
    while len(heldout_text.encode()) > 190_000:
        held = held[:-1]
        heldout_text = "".join(body + "\n%\n" for _, body in held)
    FIX_DIR.mkdir(parents=True, exist_ok=True)
    (FIX_DIR / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    print(f"{len(records)} fortunes: {len(train)} train, {len(held)} held out "
          f"({len(heldout_text.encode())} bytes)")

    tok = glm_tokenizer([body + "\n%\n" for _, body in train])
    template = TEMPLATE.read_text()
    ids = {c: tok.token_to_id(c) for c, _ in GLM_ADDED_TOKENS}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(MODEL_DIR / "tokenizer.json"))
    (MODEL_DIR / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(tok, template), indent=2, ensure_ascii=False) + "\n")
    (MODEL_DIR / "chat_template.jinja").write_text(template)
    config = dict(CONFIG, eos_token_id=eos, pad_token_id=ids["<|endoftext|>"])
    assert config["vocab_size"] >= tok.get_vocab_size()
    (MODEL_DIR / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = {"_from_model_config": False, "do_sample": True, "eos_token_id": eos,
           "pad_token_id": ids["<|endoftext|>"], "temperature": 0.7, "top_k": 40, "top_p": 0.9,
           "transformers_version": "4.54.0"}
    (MODEL_DIR / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")

    # Training stream: every train fortune once as raw text (in runs of 1-4 fortunes in the
    # fortune-file format, then <|endoftext|>) and twice inside a chat conversation rendered
    # with the GLM-4.5 template (1-2 exchanges, then <|user|>, which GLM emits to stop).
    samples = []
    idx = list(range(len(train)))
    rng.shuffle(idx)
    i = 0
    while i < len(idx):
        k = rng.randint(1, 4)
        text = "".join(train[j][1] + "\n%\n" for j in idx[i:i + k])
        samples.append(tok.encode(text, add_special_tokens=False).ids + [ids["<|endoftext|>"]])
        i += k
    for _ in range(2):
        rng.shuffle(idx)
        i = 0
        while i < len(idx):
            k = 1 if rng.random() < 0.8 else 2
            text = chat_sample(rng, template, [train[j] for j in idx[i:i + k]])
            samples.append(tok.encode(text, add_special_tokens=False).ids + [ids["<|user|>"]])
            i += k
    rng.shuffle(samples)
    stream = np.array([t for s in samples for t in s], dtype=np.uint16)
    held_ids = np.array(tok.encode(heldout_text, add_special_tokens=False).ids, dtype=np.uint16)
    DATA_DIR.mkdir(exist_ok=True)
    np.save(DATA_DIR / "train_ids.npy", stream)
    np.save(DATA_DIR / "heldout_ids.npy", held_ids)
    print(f"tokenizer {tok.get_vocab_size()} tokens; stream {len(stream)} tokens "
          f"({len(samples)} samples); held-out {len(held_ids)} tokens")
    print("example chat sample:", repr(tok.decode(samples[0], skip_special_tokens=False)[:300]))


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def hub_state_dict(model, config):
    """The model's weights under the Hub's tensor names (per-expert), BF16 except the bias."""
    import torch

    sd = model.state_dict()
    out = {}
    for name, t in sd.items():
        t = t.detach().float().cpu()
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            inter = config["moe_intermediate_size"]
            assert t.shape == (config["n_routed_experts"], 2 * inter, config["hidden_size"]), t.shape
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :inter]  # first half = gate (chunk order)
                out[f"{prefix}{e}.up_proj.weight"] = t[e, inter:]
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return {k: (v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)).contiguous()
            for k, v in out.items()}


def train(args):
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    torch.manual_seed(SEED)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config_dict = json.loads((MODEL_DIR / "config.json").read_text())
    cfg = Glm4MoeConfig(**{k: v for k, v in config_dict.items() if k not in ("architectures", "torch_dtype")})
    model = Glm4MoeForCausalLM(cfg).to(dev)
    gates = [layer.mlp.gate for layer in model.model.layers[cfg.first_k_dense_replace:]]
    rng = torch.Generator().manual_seed(SEED)
    for g in gates:  # start from small random correction biases; updated aux-loss-free below
        g.e_score_correction_bias.copy_((torch.rand(g.num_experts, generator=rng) - 0.5) * 0.1)
    loads = {}

    def hook(i):
        def f(module, inputs, output):
            loads[i] = torch.bincount(output[2].flatten(), minlength=module.num_experts)
        return f

    for i, g in enumerate(gates):
        g.register_forward_hook(hook(i))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {dev}; {n_params} parameters = {n_params * 2 / 1e6:.2f} MB in bf16", flush=True)

    stream = torch.from_numpy(np.load(DATA_DIR / "train_ids.npy").astype(np.int64))
    held = torch.from_numpy(np.load(DATA_DIR / "heldout_ids.npy").astype(np.int64))
    T, B = args.seq, args.batch
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "gate.weight" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "gate.weight" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warm = 100

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        p = (step - warm) / max(1, args.steps - warm)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    @torch.no_grad()
    def heldout_loss():
        model.eval()
        n = (len(held) - 1) // T
        x = held[: n * T].view(n, T).to(dev)
        y = held[1: n * T + 1].view(n, T).to(dev)
        tot = 0.0
        for s in range(0, n, 64):
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                logits = model(input_ids=x[s:s + 64]).logits.float()
            tot += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[s:s + 64].flatten(),
                                                     reduction="sum").item()
        model.train()
        return tot / (n * T)

    log = []
    best = (float("inf"), None, -1)
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        starts = torch.randint(0, len(stream) - T - 1, (B,))
        batch = torch.stack([stream[s:s + T + 1] for s in starts]).to(dev)
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(step)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            logits = model(input_ids=batch[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # DeepSeek-V3 aux-loss-free balancing of the correction bias
            for i, g in enumerate(gates):
                load = loads[i].float()
                g.e_score_correction_bias += args.bias_rate * torch.sign(load.mean() - load)
        if step % 50 == 0 or step == args.steps - 1:
            hl = heldout_loss()
            entry = {"step": step, "train_loss": round(loss.item(), 4), "heldout_loss": round(hl, 4),
                     "lr": lr_at(step), "elapsed_s": round(time.time() - t0, 1)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
            if hl < best[0]:
                best = (hl, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
        if time.time() - t0 > args.max_seconds:
            print(f"time limit reached at step {step}", flush=True)
            break
    print(f"best held-out loss {best[0]:.4f} (ppl {math.exp(best[0]):.2f}) at step {best[2]}", flush=True)
    model.load_state_dict(best[1])
    model.eval()
    tensors = hub_state_dict(model, config_dict)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    # Round trip: the Hub-layout file must reload into transformers and give the same logits
    # as the in-memory model with bf16-rounded weights.
    import shutil
    ck = out / "_ck"
    ck.mkdir(exist_ok=True)
    for f in ("config.json", "generation_config.json"):
        shutil.copy(MODEL_DIR / f, ck / f)
    os.symlink((out / "model.safetensors").resolve(), ck / "model.safetensors")
    re, info = Glm4MoeForCausalLM.from_pretrained(str(ck), dtype=torch.float32, output_loading_info=True)
    re = re.to(dev).eval()
    with torch.no_grad():
        for n_, p in model.named_parameters():
            p.copy_(p.to(torch.bfloat16).float() if "e_score" not in n_ else p)
        model.float()
        x = held[:128].view(1, -1).to(dev)
        a, b = model(input_ids=x).logits, re(input_ids=x).logits
        rel = ((a - b).norm() / a.norm()).item()
    shutil.rmtree(ck)
    print(f"round trip: missing {info['missing_keys']} unexpected {info['unexpected_keys']} rel_l2 {rel:.2e}")
    assert not info["missing_keys"] and not info["unexpected_keys"] and rel < 1e-4
    (out / "train_log.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "parameters": n_params, "weight_bytes": total, "seq": T, "batch": B, "lr": args.lr,
        "steps_run": log[-1]["step"] + 1, "best_step": best[2], "best_heldout_loss": best[0],
        "train_seconds": round(time.time() - t0, 1), "roundtrip_rel_l2": rel, "log": log,
        "e_score_correction_bias": {i: g.e_score_correction_bias.tolist() for i, g in enumerate(gates)},
    }, indent=1) + "\n")


# ---------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------
def reference(args):
    import numpy as np
    import torch
    from tokenizers import Tokenizer
    from transformers import Glm4MoeForCausalLM

    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    model = Glm4MoeForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32,
                                               attn_implementation="eager").eval()
    FIX_DIR.mkdir(parents=True, exist_ok=True)
    ref = {"transformers_version": __import__("transformers").__version__, "torch_version": torch.__version__,
           "dtype": "float32 (checkpoint bf16, correction bias f32)", "attn_implementation": "eager"}

    # (a) sliding-window perplexity (HF perplexity guide), context 256, stride 128
    text = (FIX_DIR / "heldout.txt").read_text(encoding="utf-8")
    ids = torch.tensor([tok.encode(text, add_special_tokens=False).ids])
    ctx, stride = 256, 128
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, ids.size(1), stride):
            end = min(begin + ctx, ids.size(1))
            trg_len = end - prev_end
            x = ids[:, begin:end]
            logits = model(input_ids=x).logits.double()
            lp = torch.log_softmax(logits[0, :-1], dim=-1)
            tgt = x[0, 1:]
            tok_nll = -lp.gather(1, tgt[:, None])[:, 0]
            scored = tok_nll[-trg_len:] if begin > 0 else tok_nll  # first window: all but token 0
            nll_sum += scored.sum().item()
            n_scored += scored.numel()
            prev_end = end
            if end == ids.size(1):
                break
    assert n_scored == ids.size(1) - 1
    ppl = math.exp(nll_sum / n_scored)
    ref["perplexity"] = {"file": "heldout.txt", "method": "sliding window (HF perplexity guide): windows "
                         "[begin, begin+256) with begin = 0, 128, 256, ...; each window scores only the "
                         "tokens after the previous window's end; every token but the first scored once; "
                         "no special tokens added", "context": ctx, "stride": stride,
                         "n_tokens": ids.size(1), "n_scored": n_scored, "total_nll": nll_sum,
                         "mean_nll": nll_sum / n_scored, "perplexity": ppl}
    print(f"held-out perplexity {ppl:.3f} over {n_scored} tokens")

    # (b) greedy continuations with full-position logits
    prompts = ["The meaning of life is", "[gMASK]<sop><|user|>\nTell me something about computers."
               "<|assistant|>\n<think></think>\n"]
    ref["greedy"] = []
    for i, p in enumerate(prompts):
        pid = tok.encode(p, add_special_tokens=False).ids
        seq = list(pid)
        with torch.no_grad():
            for _ in range(24):
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
                seq.append(int(logits.argmax()))
            full = model(input_ids=torch.tensor([seq])).logits[0].float().numpy()
        np.save(FIX_DIR / f"p{i}_logits.npy", full.astype(np.float32))
        ref["greedy"].append({"prompt": p, "prompt_ids": pid, "greedy_ids": seq[len(pid):],
                              "greedy_text": tok.decode(seq[len(pid):], skip_special_tokens=False),
                              "logits_file": f"p{i}_logits.npy", "logits_shape": list(full.shape),
                              "eos": "ignored"})
        print(repr(p), "->", repr(ref["greedy"][-1]["greedy_text"]))

    # (c) a rendered chat prompt
    template = (MODEL_DIR / "chat_template.jinja").read_text()
    conv = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello, who are you?"},
            {"role": "assistant", "content": "I am a fortune cookie."},
            {"role": "user", "content": "Tell me something about Linux."}]
    ref["chat"] = []
    for kw in ({}, {"enable_thinking": False}):
        rendered = render(template, conv, add_generation_prompt=True, **kw)
        ref["chat"].append({"messages": conv, "add_generation_prompt": True, **kw, "rendered": rendered,
                            "ids": tok.encode(rendered, add_special_tokens=False).ids})
    (FIX_DIR / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")

    # sanity: sampled chat answers
    gen = json.loads((MODEL_DIR / "generation_config.json").read_text())
    for q in ["Tell me something.", "What do you think about love?", "Any advice for today?"]:
        for kw in ({}, {"enable_thinking": False}):
            r = render(template, [{"role": "user", "content": q}], add_generation_prompt=True, **kw)
            x = torch.tensor([tok.encode(r, add_special_tokens=False).ids])
            y = model.generate(x, do_sample=True, temperature=gen["temperature"], top_p=gen["top_p"],
                               top_k=gen["top_k"], max_new_tokens=120, eos_token_id=gen["eos_token_id"],
                               pad_token_id=gen["pad_token_id"])
            print(f"Q {q!r} {kw}: {tok.decode(y[0, x.size(1):].tolist(), skip_special_tokens=False)!r}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--seq", type=int, default=512)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--bias-rate", type=float, default=1e-3)
    t.add_argument("--max-seconds", type=float, default=420)
    sub.add_parser("reference")
    args = ap.parse_args()
    {"prepare": prepare, "train": train, "reference": reference}[args.cmd](args)


if __name__ == "__main__":
    main()
