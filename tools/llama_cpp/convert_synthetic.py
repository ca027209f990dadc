#!/usr/bin/env python3
"""Convert a glm4moe synthetic checkpoint (Hub layout, bf16) to GGUF with llama.cpp's own converter.

What it does: llama.cpp's convert_hf_to_gguf.py (class Glm4MoeModel) does the tensor naming,
the stacking of the per-expert weights into ffn_{gate,up,down}_exps and the GGUF metadata, so the
GGUF holds exactly the weights of the safetensors checkpoint. The converter also wants a tokenizer;
synthetic checkpoints have none, so this script stages a directory holding symlinks to the
checkpoint's config.json and *.safetensors plus the tokenizer of models/glm4moe-tiny-fortunes (a
4096-token byte-level BPE with GLM's pre-tokenizer and GLM's special tokens). The converter pads the
vocabulary to config.json's vocab_size (151552 for the GLM-4.5-Air shape) with [PAD<i>] tokens.
Because that tokenizer is not one the converter knows by hash, the pre-tokenizer is set to "glm4"
(the one llama.cpp uses for GLM-4.5-Air) instead of failing. Benchmarks never tokenize text:
llama-bench feeds token ids.

Needs: the llama.cpp source tree (for convert_hf_to_gguf.py, conversion/ and gguf-py/), and the
Python packages it imports (torch, transformers, numpy, safetensors).

Usage:
  python tools/llama_cpp/convert_synthetic.py --llama-cpp SRC --model DIR --outfile X.gguf \
      [--outtype bf16] [--tokenizer-dir models/glm4moe-tiny-fortunes]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stage(model: Path, tokenizer_dir: Path, staging: Path) -> None:
    for item in sorted(model.iterdir()):
        if item.name == "config.json" or item.suffix == ".safetensors" or item.name.endswith(".index.json"):
            (staging / item.name).symlink_to(item.resolve())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, staging / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree")
    parser.add_argument("--model", type=Path, required=True, help="safetensors checkpoint directory")
    parser.add_argument("--outfile", type=Path, required=True)
    parser.add_argument("--outtype", default="bf16", choices=["bf16", "f16", "f32", "q8_0"])
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO / "models" / "glm4moe-tiny-fortunes")
    args = parser.parse_args()

    source = args.llama_cpp.resolve()
    sys.path.insert(0, str(source))
    sys.path.insert(1, str(source / "gguf-py"))
    import convert_hf_to_gguf  # noqa: E402  (llama.cpp's converter)
    from conversion.base import TextModel  # noqa: E402

    def glm4_pre_tokenizer(self, tokenizer) -> str:  # the tokenizer is a stand-in; see the docstring
        return "glm4"

    TextModel.get_vocab_base_pre = glm4_pre_tokenizer

    staging = Path(tempfile.mkdtemp(prefix="gguf-stage-", dir=args.outfile.resolve().parent))
    try:
        stage(args.model.resolve(), args.tokenizer_dir.resolve(), staging)
        sys.argv = ["convert_hf_to_gguf.py", str(staging), "--outfile", str(args.outfile),
                    "--outtype", args.outtype, "--model-name", "glm-4.5-air-synthetic"]
        convert_hf_to_gguf.main()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main()
