#!/usr/bin/env python3
"""Make the quantization test fixtures (tests/fixtures/quant_*) from mlx and transformers.

What it writes
--------------
tests/fixtures/quant_rows/rows.safetensors
    Small matrices quantized by mlx's own mx.quantize, for every bit width mlx
    writes (2, 3, 4, 5, 6, 8) and group size (32, 64, 128): key "b{bits}_g{group}_{dtype}"
      .input        [6, 256] the values (dtype bf16; f32 and f16 for a few cases)
      .weight       U32 packed, .scales / .biases in the input's dtype (mx.quantize)
      .dequantized  F32 mx.dequantize with the scales/biases widened to f32 (what an
                    f32 forward pass uses)
    Rows cover typical weights, an outlier, all-negative values, constant 0, a constant,
    and values below mlx's 1e-7 scale floor.

tests/fixtures/quant_mlx_{4bit_g64,8bit_g64,mixed}/
    mlx-lm's own quantized copy of tests/fixtures/grouped_bf16_sharded, made as
    mlx_lm.convert does (load, cast to torch_dtype except e_score_correction_bias,
    quantize_model, save_model, save_config); "mixed" uses mlx-lm's mixed_3_6 recipe at
    group 32 (per-module overrides in config.json) plus a `false` entry for a router.
    expected/p{i}_logits.npy: mlx-lm's logits of that copy (model.set_dtype(float32):
    f32 activations, scales and biases widened to f32) for the prompts of
    grouped_bf16_sharded/reference/meta.json; expected/quant_meta.json describes them.

tests/fixtures/quant_fp8_{channel,block}/
    FP8 e4m3 compressed-tensors ("float-quantized") copies of grouped_bf16_sharded as
    llm-compressor writes them: every Linear (attention, MLPs, experts, MTP eh_proj)
    quantized, ignore ["lm_head", "re:.*mlp\\.gate$"] (the router is not a Linear
    anyway), embed/norms/biases kept. channel: weight_scale BF16 [out, 1];
    block: block_structure [32, 32], weight_scale F32 [ceil(out/32), ceil(in/32)].
    expected/p{i}_logits.npy: transformers Glm4MoeForCausalLM (float32, eager) run on
    the dequantized weights (fp8 -> f32 times the stored scale).

None of these folders holds reference/meta.json, so tests/model's Reference suite
does not pick them up.

Checking our quantizer's output with mlx-lm
-------------------------------------------
    python tools/make_quant_fixtures.py --check-ours DIR --against quant_mlx_4bit_g64
loads DIR (written by `glm4moe quantize`) with mlx-lm, compares its logits with the
fixture's, compares every tensor mlx-lm wrote with ours, and greedily generates tokens.

How to run
----------
    pip install -r tools/requirements.txt
    python tools/make_quant_fixtures.py      # deterministic: identical bytes on rerun
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SOURCE = FIXTURES / "grouped_bf16_sharded"
WIDTH = 256


def prompts() -> list[list[int]]:
    meta = json.loads((SOURCE / "reference" / "meta.json").read_text())
    return [p["ids"] for p in meta["prompts"]]


def versions() -> dict:
    import mlx.core as mx
    import mlx_lm
    import torch
    import transformers

    return {"mlx_version": mx.__version__, "mlx_lm_version": mlx_lm.__version__,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__}


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def rel_l2(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------
# quant_rows: mx.quantize / mx.dequantize of small matrices
# ---------------------------------------------------------------------------------
def row_values(rng: np.random.Generator) -> np.ndarray:
    rows = [
        rng.standard_normal(WIDTH) * 0.05,                                  # typical weights
        np.concatenate([rng.standard_normal(WIDTH - 1) * 0.02, [0.9]]),     # one outlier
        -np.abs(rng.standard_normal(WIDTH)) * 0.1,                          # |min| > |max|
        np.zeros(WIDTH),                                                     # constant 0
        np.full(WIDTH, 0.37),                                                # constant
        rng.standard_normal(WIDTH) * 1e-8,                                   # below the eps scale
    ]
    return np.stack(rows).astype(np.float32)


def make_rows() -> None:
    import mlx.core as mx

    out = fresh(FIXTURES / "quant_rows")
    rng = np.random.default_rng(20240501)
    cases = [(b, g, "bfloat16") for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)]
    cases += [(b, g, d) for (b, g) in ((3, 64), (4, 64), (8, 32), (6, 128)) for d in ("float32", "float16")]
    tensors = {}
    for bits, group, dtype_name in cases:
        key = f"b{bits}_g{group}_{ {'bfloat16': 'bf16', 'float32': 'f32', 'float16': 'f16'}[dtype_name] }"
        w = mx.array(row_values(rng)).astype(getattr(mx, dtype_name))
        wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
        deq = mx.dequantize(wq, scales.astype(mx.float32), biases.astype(mx.float32), group_size=group, bits=bits)
        tensors[f"{key}.input"] = w
        tensors[f"{key}.weight"] = wq
        tensors[f"{key}.scales"] = scales
        tensors[f"{key}.biases"] = biases
        tensors[f"{key}.dequantized"] = deq.astype(mx.float32)
    mx.eval(tensors)
    mx.save_safetensors(str(out / "rows.safetensors"), tensors, metadata={"format": "mlx"})
    (out / "README.md").write_text(ROWS_README)
    print(f"  [quant_rows] {len(cases)} cases", flush=True)


ROWS_README = """# Quantization fixtures

Made by `tools/make_quant_fixtures.py` (see its docstring for every folder):

* `quant_rows/rows.safetensors`: mx.quantize / mx.dequantize of small matrices for
  bits 2, 3, 4, 5, 6, 8 and groups 32, 64, 128 (the oracle for the affine packing).
* `quant_mlx_{4bit_g64,8bit_g64,mixed}/`: mlx-lm's own quantized copies of
  `grouped_bf16_sharded` (as mlx_lm.convert makes them) + mlx-lm's f32 logits.
* `quant_fp8_{channel,block}/`: compressed-tensors FP8 copies of `grouped_bf16_sharded`
  + transformers' f32 logits of the dequantized weights.
"""


# ---------------------------------------------------------------------------------
# quant_mlx_*: mlx-lm's quantized copies
# ---------------------------------------------------------------------------------
def mlx_convert(dst: Path, bits: int, group: int, recipe: str | None) -> dict:
    """mlx_lm.convert(quantize=True) without the tokenizer step (the fixture has none)."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(SOURCE, lazy=True)
    dtype = getattr(mx, config["torch_dtype"])
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def set_dtype(k, v):
        if cast_predicate(k) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(dtype)
        return v

    model.update(tree_map_with_path(set_dtype, model.parameters()))
    predicate = mixed_quant_predicate_builder(recipe, model, group) if recipe else None
    model, config = quantize_model(model, config, group, bits, quant_predicate=predicate)
    save_model(dst, model, donate_model=True)
    save_config(config, config_path=dst / "config.json")
    shutil.copy(SOURCE / "generation_config.json", dst / "generation_config.json")
    return config


def mlx_logits(path: Path, ids_list: list[list[int]]) -> list[np.ndarray]:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(path, strict=True)
    model.set_dtype(mx.float32)  # f32 activations; scales/biases widened exactly
    out = []
    for ids in ids_list:
        y = model(mx.array([ids], dtype=mx.int32))
        mx.eval(y)
        out.append(np.array(y[0].astype(mx.float32), dtype=np.float32))
    return out


def make_mlx(name: str, bits: int, group: int, recipe: str | None = None) -> None:
    out = fresh(FIXTURES / name)
    mlx_convert(out, bits, group, recipe)
    if recipe:
        # mlx-community configs list unquantized modules as `false`; the router of a
        # MoE layer is one (it is no Linear, so it was not quantized anyway).
        config = json.loads((out / "config.json").read_text())
        for key in ("quantization", "quantization_config"):
            config[key]["model.layers.2.mlp.gate"] = False
        (out / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=4))
    ids_list = prompts()
    logits = mlx_logits(out, ids_list)
    exp = out / "expected"
    exp.mkdir()
    transformers_rel = []
    for i, y in enumerate(logits):
        np.save(exp / f"p{i}_logits.npy", y)
        ref = np.load(SOURCE / "reference" / f"p{i}_transformers_logits.npy")
        transformers_rel.append(rel_l2(y, ref))
    meta = {
        "source": "grouped_bf16_sharded", **versions(), "bits": bits, "group_size": group, "recipe": recipe,
        "made_by": "mlx_lm.utils load_model + cast to torch_dtype (cast_predicate) + quantize_model + "
                   "save_model + save_config (= mlx_lm.convert -q without the tokenizer)",
        "logits": "mlx-lm, model.set_dtype(mx.float32) after loading",
        "prompts": [{"ids": ids, "logits": f"p{i}_logits.npy"} for i, ids in enumerate(ids_list)],
        "rel_l2_vs_float_transformers": transformers_rel,
    }
    (exp / "quant_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  [{name}] rel L2 vs float model {[f'{r:.3g}' for r in transformers_rel]}", flush=True)


# ---------------------------------------------------------------------------------
# quant_fp8_*: compressed-tensors FP8 copies, transformers reference
# ---------------------------------------------------------------------------------
LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
                   "up_proj.weight", "down_proj.weight", "eh_proj.weight")
FP8_MAX = 448.0


def load_source_tensors():
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(SOURCE.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def fp8_channel(w):
    import torch

    w = w.float()
    scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12).to(torch.bfloat16)  # [out, 1]
    q = (w / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale, q.float() * scale.float()


def fp8_block(w, block):
    import torch

    w = w.float()
    out, inp = w.shape
    br, bc = block
    nr, nc = -(-out // br), -(-inp // bc)
    padded = torch.zeros(nr * br, nc * bc)
    padded[:out, :inp] = w
    amax = padded.reshape(nr, br, nc, bc).abs().amax(dim=(1, 3))
    scale = (amax / FP8_MAX).clamp(min=1e-12)  # f32 [nr, nc]
    expanded = scale.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:out, :inp]
    q = (w / expanded).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale, q.float() * expanded


def fp8_config(strategy: str, block) -> dict:
    weights = {"actorder": None, "block_structure": list(block) if block else None, "dynamic": False,
               "group_size": None, "num_bits": 8, "observer": "minmax", "observer_kwargs": {},
               "strategy": strategy, "symmetric": True, "type": "float"}
    activations = {"actorder": None, "block_structure": None, "dynamic": True, "group_size": None, "num_bits": 8,
                   "observer": None, "observer_kwargs": {}, "strategy": "token", "symmetric": True,
                   "type": "float"}
    return {"config_groups": {"group_0": {"input_activations": activations, "output_activations": None,
                                          "targets": ["Linear"], "weights": weights}},
            "format": "float-quantized", "global_compression_ratio": None,
            "ignore": ["lm_head", "re:.*mlp\\.gate$"], "kv_cache_scheme": None,
            "quant_method": "compressed-tensors", "quantization_status": "compressed", "sparsity_config": {}}


def transformers_logits(weights: dict, config: dict, ids_list) -> list[np.ndarray]:
    import torch
    from safetensors.torch import save_file
    from transformers import Glm4MoeForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(config)
        cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = "float32"
        Path(tmp, "config.json").write_text(json.dumps(cfg))
        save_file({k: v.float().contiguous() for k, v in weights.items()}, str(Path(tmp, "model.safetensors")))
        model = Glm4MoeForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in ids_list]


def make_fp8(name: str, strategy: str, block=None) -> None:
    import torch
    from safetensors.torch import save_file

    out = fresh(FIXTURES / name)
    source = load_source_tensors()
    stored, dequantized = {}, {}
    for k in sorted(source):
        t = source[k]
        if k.endswith(LINEAR_SUFFIXES) and not k.endswith("mlp.gate.weight"):
            q, scale, deq = fp8_channel(t) if strategy == "channel" else fp8_block(t, block)
            stored[k] = q.contiguous()
            stored[k[: -len("weight")] + "weight_scale"] = scale.contiguous()
            dequantized[k] = deq
        else:
            stored[k] = t.contiguous()
            dequantized[k] = t.float()
    save_file(stored, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((SOURCE / "config.json").read_text())
    config["quantization_config"] = fp8_config(strategy, block)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copy(SOURCE / "generation_config.json", out / "generation_config.json")

    torch.set_num_threads(1)
    ids_list = prompts()
    logits = transformers_logits(dequantized, config, ids_list)
    exp = out / "expected"
    exp.mkdir()
    rels = []
    for i, y in enumerate(logits):
        np.save(exp / f"p{i}_logits.npy", y)
        rels.append(rel_l2(y, np.load(SOURCE / "reference" / f"p{i}_transformers_logits.npy")))
    meta = {
        "source": "grouped_bf16_sharded", **versions(), "strategy": strategy, "block": list(block) if block else None,
        "logits": "transformers Glm4MoeForCausalLM float32 eager on fp8.float() * scale.float() weights",
        "prompts": [{"ids": ids, "logits": f"p{i}_logits.npy"} for i, ids in enumerate(ids_list)],
        "rel_l2_vs_float_transformers": rels,
    }
    (exp / "quant_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  [{name}] rel L2 vs float model {[f'{r:.3g}' for r in rels]}", flush=True)


# ---------------------------------------------------------------------------------
# Checking glm4moe quantize's output with mlx-lm
# ---------------------------------------------------------------------------------
def check_ours(ours: Path, against: str) -> None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load_model

    fixture = FIXTURES / against
    theirs = {}
    for f in fixture.glob("*.safetensors"):
        theirs.update(mx.load(str(f)))
    mine = {}
    for f in ours.glob("*.safetensors"):
        mine.update(mx.load(str(f)))
    differing = [k for k, v in theirs.items()
                 if k not in mine or mine[k].dtype != v.dtype or mine[k].shape != v.shape
                 or not bool(mx.array_equal(mine[k], v))]
    extra = sorted(set(mine) - set(theirs))
    print(f"tensors: mlx-lm wrote {len(theirs)}, ours {len(mine)}; differing {differing[:5]} "
          f"({len(differing)}); only ours: {len(extra)} (MTP layer: {all('layers.4.' in k for k in extra)})")

    meta = json.loads((fixture / "expected" / "quant_meta.json").read_text())
    ids_list = [p["ids"] for p in meta["prompts"]]
    logits = mlx_logits(ours, ids_list)
    for i, y in enumerate(logits):
        print(f"p{i}: rel L2 mlx-lm(ours) vs mlx-lm(its own copy) = "
              f"{rel_l2(y, np.load(fixture / 'expected' / f'p{i}_logits.npy')):.3g}")

    def greedy(path: Path) -> list[int]:
        model, _ = load_model(path, strict=True)
        model.set_dtype(mx.float32)  # mlx's CPU gather_mm (float SwitchLinear) only takes float32
        return [int(token) for token, _ in generate_step(mx.array(ids_list[1], dtype=mx.int32), model,
                                                         max_tokens=12, sampler=make_sampler(temp=0.0))]

    mine_tokens, their_tokens = greedy(ours), greedy(fixture)
    print(f"mlx-lm greedy generation from our checkpoint: {mine_tokens}; "
          f"from its own: {their_tokens}; equal: {mine_tokens == their_tokens}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-ours", type=Path, help="a directory written by `glm4moe quantize`")
    parser.add_argument("--against", default="quant_mlx_4bit_g64", help="the mlx-lm fixture to compare with")
    parser.add_argument("only", nargs="*", help="fixture names to (re)make (default: all)")
    args = parser.parse_args()
    if args.check_ours:
        check_ours(args.check_ours, args.against)
        return

    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    jobs = {
        "quant_rows": make_rows,
        "quant_mlx_4bit_g64": lambda: make_mlx("quant_mlx_4bit_g64", 4, 64),
        "quant_mlx_8bit_g64": lambda: make_mlx("quant_mlx_8bit_g64", 8, 64),
        "quant_mlx_mixed": lambda: make_mlx("quant_mlx_mixed", 3, 32, recipe="mixed_3_6"),
        "quant_fp8_channel": lambda: make_fp8("quant_fp8_channel", "channel"),
        "quant_fp8_block": lambda: make_fp8("quant_fp8_block", "block", (32, 32)),
    }
    for name, job in jobs.items():
        if not args.only or name in args.only:
            job()


if __name__ == "__main__":
    main()
