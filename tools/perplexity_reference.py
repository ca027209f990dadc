"""Perplexity of a token prefix of a text with transformers, for the C++ tests.

Encodes the text with the checkpoint's tokenizer.json (HF `tokenizers`, no
special tokens), keeps the first --max-tokens ids, and scores them with the
sliding-window method of the HF perplexity guide (windows of --context tokens
every --stride tokens; each window scores only the tokens after the previous
window's end, so every token after the first is scored once), in float32.

    python tools/perplexity_reference.py --model models/glm4moe-tiny-fortunes \
        --text tests/fixtures/trained/heldout.txt --max-tokens 1200 \
        --context 256 --stride 128 --output tests/fixtures/trained/perplexity_prefix.json
"""
import argparse
import json
import math

import torch
import transformers
from tokenizers import Tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    with open(args.text, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read(), add_special_tokens=False).ids[: args.max_tokens]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager").eval()

    total_nll, scored, previous_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), args.stride):
            end = min(begin + args.context, len(ids))
            window = torch.tensor([ids[begin:end]])
            logits = model(window).logits[0].double()
            log_probs = torch.log_softmax(logits, dim=-1)
            for target in range(max(previous_end, begin + 1), end):
                total_nll -= log_probs[target - 1 - begin, ids[target]].item()
                scored += 1
            previous_end = end
            if end == len(ids):
                break
    result = {
        "transformers_version": transformers.__version__,
        "text": args.text.split("/")[-1], "max_tokens": args.max_tokens,
        "context": args.context, "stride": args.stride, "prompt_ids_head": ids[:8],
        "scored_tokens": scored, "total_nll": total_nll, "perplexity": math.exp(total_nll / scored),
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(result)


if __name__ == "__main__":
    main()
