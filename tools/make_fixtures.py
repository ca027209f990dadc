#!/usr/bin/env python3
"""Make the tiny random GLM-4 MoE test checkpoints and their reference outputs.

What it does
------------
For every case in CASES it writes, under tests/fixtures/<case>/, a tiny random
GLM-4 MoE ("glm4_moe") checkpoint in the Hugging Face Hub's own layout:

  config.json, generation_config.json          Hub-style (top-level rope_theta,
                                               partial_rotary_factor, rope_scaling,
                                               torch_dtype, eos_token_id list, ...)
  model.safetensors                            or model-0000i-of-0000n.safetensors
                                               + model.safetensors.index.json
  reference/p{0,1,2}_transformers_logits.npy   float32 [T, vocab], every prompt position
  reference/p{0,1,2}_mlx_logits.npy            float32 [T, vocab] from mlx-lm
  reference/meta.json                          prompts, greedy ids, gaps, versions, ...

Tensor names and shapes are exactly the Hub's (model.layers.L.mlp.experts.E.*,
mlp.gate.weight, mlp.gate.e_score_correction_bias -- stored F32 even in BF16 files --,
mlp.shared_experts.*, and for cases with MTP the extra layer model.layers.N.{enorm,
hnorm,eh_proj,shared_head.norm,...} at N = num_hidden_layers).

References:
  * transformers Glm4MoeForCausalLM (float32, eval, attn_implementation="eager"):
    logits at every prompt position and a 24-token greedy continuation (eos ignored;
    the eos/pad/bos rows of lm_head are also scaled down so they are never argmax).
  * mlx-lm (mlx_lm.utils.load_model, model cast to float32): logits at every prompt
    position, compared with transformers by relative L2 error.

Weights are re-drawn (new seed, bounded attempts) until every decision recorded is
decided by a margin: k-th vs (k+1)-th eligible biased router score, topk_group-th vs
next group score, and top-1 vs top-2 logit at every greedy step.  The router inputs
are captured with forward hooks on the transformers router modules and routed again
with tools/numpy_router.py, which also finds tokens where the "-inf" (transformers)
and "0" (mlx-lm) group-masking rules choose different experts.

Also writes models/tiny-random/ (a copy of case grouped_bf16_sharded's checkpoint
without its reference folder) for the README demo.

How to run
----------
    pip install -r tools/requirements.txt
    python tools/make_fixtures.py          # regenerates everything, deterministically

Everything is derived from fixed seeds and runs single-threaded, so two runs write
byte-identical files.  Takes about 10-20 s on a CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy_router  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
DEMO_DIR = REPO / "models" / "tiny-random"

VOCAB = 512
BOS_ID = 508
EOS_IDS = [509, 510, 511]
PAD_ID = 509
SPECIAL_IDS = [BOS_ID] + EOS_IDS          # never in prompts, never greedy-chosen
PROMPT_LENGTHS = [1, 8, 64]
N_GREEDY = 24
ROUTING_GAP = 1e-4                        # min margin of every routing decision
LOGIT_GAP = 1e-3                          # min top-1 vs top-2 margin at greedy steps
MLX_REL_L2_TOL = 1e-4
MIN_DISTINCT_GREEDY = 8                   # reject degenerate (repeating) continuations
MAX_ATTEMPTS = 400

# ---------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------
# "bias": how e_score_correction_bias is drawn
#   "mixed"      N(0, 0.3)
#   "negative"   all negative, U(-0.7, -0.3): eligible biased scores often < 0, so the
#                "-inf" and "0" masking rules disagree (mlx-lm's choice then includes
#                experts of pruned groups, which all tie at 0 -> implementation-defined)
#   "zero_exact" per group of 2: (+0.5, -1.2) for the first two groups, (-1.2, -1.2)
#                for the rest. At most two eligible positive scores, so with top_k 4
#                the "0" rule always takes exactly the 2 zeroed experts of the pruned
#                group: the rules disagree at every MoE token, yet both are decided.
CASES = [
    dict(
        name="grouped_bf16_sharded",
        seed=1,
        dtype="bf16",
        n_shards=3,
        mtp=True,
        bias="mixed",
        require_disagreement=False,
        require_zero_rule_decided=False,
        config=dict(
            hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=4, first_k_dense_replace=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            partial_rotary_factor=0.5, rope_theta=10000.0, rms_norm_eps=1e-5,
            attention_bias=True, use_qk_norm=True,
            n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4,
            n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        name="plain_f32_tied_mqa",
        seed=2,
        # Tied head: with a large embedding the token's own embedding dominates the
        # residual and greedy decoding repeats the last token; so a small embedding
        # and large sublayer outputs.
        embed_std=0.3,
        out_std=3.0,
        dtype="f32",
        n_shards=1,
        mtp=False,
        bias="mixed",
        require_disagreement=False,
        require_zero_rule_decided=False,
        config=dict(
            hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=2, first_k_dense_replace=0,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            partial_rotary_factor=1.0, rope_theta=1000000.0, rms_norm_eps=1e-6,
            attention_bias=False, use_qk_norm=False,
            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
            n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False,
            tie_word_embeddings=True,
        ),
    ),
    dict(
        name="negbias_quarter_rotary",
        seed=3,
        dtype="f32",
        n_shards=1,
        mtp=True,
        bias="negative",
        require_disagreement=True,
        require_zero_rule_decided=False,
        config=dict(
            hidden_size=96, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=3, first_k_dense_replace=1,
            num_attention_heads=6, num_key_value_heads=2, head_dim=32,
            partial_rotary_factor=0.25, rope_theta=50000.0, rms_norm_eps=1e-5,
            attention_bias=False, use_qk_norm=True,
            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
            n_group=2, topk_group=1, routed_scaling_factor=1.5, norm_topk_prob=True,
            tie_word_embeddings=False,
        ),
    ),
    dict(
        # Extra case: a -inf vs 0 disagreement where mlx-lm's "0" choice is itself
        # decided, so p*_mlx_logits.npy is a well-defined reference for the "0" rule.
        # Also: attention bias on with qk-norm off, GQA 4:1, norm_topk_prob false
        # with routed_scaling_factor != 1.
        name="zeromask_exact_bias_noqknorm",
        seed=4,
        dtype="f32",
        n_shards=1,
        mtp=False,
        bias="zero_exact",
        require_disagreement=True,
        require_zero_rule_decided=True,
        config=dict(
            hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=2, first_k_dense_replace=1,
            num_attention_heads=8, num_key_value_heads=2, head_dim=16,
            partial_rotary_factor=0.5, rope_theta=10000.0, rms_norm_eps=1e-5,
            attention_bias=True, use_qk_norm=False,
            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=4,
            n_group=4, topk_group=3, routed_scaling_factor=2.0, norm_topk_prob=False,
            tie_word_embeddings=False,
        ),
    ),
]

DEMO_CASE = "grouped_bf16_sharded"


# ---------------------------------------------------------------------------------
# Checkpoint writing
# ---------------------------------------------------------------------------------
def finite_or_null(value):
    """Replaces inf/nan floats (anywhere in a JSON-like value) with None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def hub_config(case: dict) -> dict:
    c = case["config"]
    cfg = {
        "architectures": ["Glm4MoeForCausalLM"],
        "model_type": "glm4_moe",
        "vocab_size": VOCAB,
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "moe_intermediate_size": c["moe_intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "first_k_dense_replace": c["first_k_dense_replace"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "partial_rotary_factor": c["partial_rotary_factor"],
        "rope_theta": c["rope_theta"],
        "rope_scaling": None,
        "max_position_embeddings": 256,
        "attention_bias": c["attention_bias"],
        "attention_dropout": 0.0,
        "use_qk_norm": c["use_qk_norm"],
        "rms_norm_eps": c["rms_norm_eps"],
        "n_routed_experts": c["n_routed_experts"],
        "n_shared_experts": c["n_shared_experts"],
        "num_experts_per_tok": c["num_experts_per_tok"],
        "n_group": c["n_group"],
        "topk_group": c["topk_group"],
        "routed_scaling_factor": c["routed_scaling_factor"],
        "norm_topk_prob": c["norm_topk_prob"],
        "num_nextn_predict_layers": 1 if case["mtp"] else 0,
        "tie_word_embeddings": c["tie_word_embeddings"],
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": list(EOS_IDS),
        "pad_token_id": PAD_ID,
        "torch_dtype": "bfloat16" if case["dtype"] == "bf16" else "float32",
    }
    return cfg


def generation_config() -> dict:
    return {
        "bos_token_id": BOS_ID,
        "eos_token_id": list(EOS_IDS),
        "pad_token_id": PAD_ID,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 40,
    }


def make_weights(case: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float32 weights, Hub names, in Hub order (embed, layers..., norm, head)."""
    c = case["config"]
    H, I, MI = c["hidden_size"], c["intermediate_size"], c["moe_intermediate_size"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    E = c["n_routed_experts"]
    G = c["n_group"]
    L = c["num_hidden_layers"]
    W: dict[str, np.ndarray] = {}
    out_std = case.get("out_std", 0.7)     # scale of what each sublayer adds to the residual

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def correction_bias():
        if case["bias"] == "mixed":
            return normal(E, 0.3)
        if case["bias"] == "negative":
            return (-0.3 - 0.4 * rng.random(E)).astype(np.float32)
        if case["bias"] == "zero_exact":
            per = E // G
            assert per == 2, "zero_exact bias needs groups of 2"
            b = np.full(E, -1.2)
            b[0::per][:2] = 0.5                      # one positive expert in groups 0, 1
            return (b + 0.02 * rng.standard_normal(E)).astype(np.float32)
        raise ValueError(case["bias"])

    def mlp(prefix, inter):
        W[f"{prefix}.gate_proj.weight"] = normal((inter, H), H ** -0.5)
        W[f"{prefix}.up_proj.weight"] = normal((inter, H), H ** -0.5)
        W[f"{prefix}.down_proj.weight"] = normal((H, inter), out_std * inter ** -0.5)

    def decoder_layer(p, moe):
        W[f"{p}.input_layernorm.weight"] = norm_w(H)
        W[f"{p}.self_attn.q_proj.weight"] = normal((nh * hd, H), H ** -0.5)
        W[f"{p}.self_attn.k_proj.weight"] = normal((nkv * hd, H), H ** -0.5)
        W[f"{p}.self_attn.v_proj.weight"] = normal((nkv * hd, H), H ** -0.5)
        if c["attention_bias"]:
            W[f"{p}.self_attn.q_proj.bias"] = normal(nh * hd, 0.2)
            W[f"{p}.self_attn.k_proj.bias"] = normal(nkv * hd, 0.2)
            W[f"{p}.self_attn.v_proj.bias"] = normal(nkv * hd, 0.2)
        W[f"{p}.self_attn.o_proj.weight"] = normal((H, nh * hd), out_std * (nh * hd) ** -0.5)
        if c["use_qk_norm"]:
            W[f"{p}.self_attn.q_norm.weight"] = norm_w(hd)
            W[f"{p}.self_attn.k_norm.weight"] = norm_w(hd)
        W[f"{p}.post_attention_layernorm.weight"] = norm_w(H)
        if moe:
            W[f"{p}.mlp.gate.weight"] = normal((E, H), 2.0 * H ** -0.5)
            W[f"{p}.mlp.gate.e_score_correction_bias"] = correction_bias()
            for e in range(E):
                mlp(f"{p}.mlp.experts.{e}", MI)
            mlp(f"{p}.mlp.shared_experts", MI * c["n_shared_experts"])
        else:
            mlp(f"{p}.mlp", I)

    # Tied: a smaller embedding, or the token's own embedding dominates the residual
    # stream and greedy decoding just repeats the last token.
    W["model.embed_tokens.weight"] = normal((VOCAB, H), case.get("embed_std", 1.0))
    for l in range(L):
        decoder_layer(f"model.layers.{l}", moe=l >= c["first_k_dense_replace"])
    if case["mtp"]:
        p = f"model.layers.{L}"
        W[f"{p}.enorm.weight"] = norm_w(H)
        W[f"{p}.hnorm.weight"] = norm_w(H)
        W[f"{p}.eh_proj.weight"] = normal((H, 2 * H), (2 * H) ** -0.5)
        decoder_layer(p, moe=True)
        W[f"{p}.shared_head.norm.weight"] = norm_w(H)
    W["model.norm.weight"] = norm_w(H)
    if c["tie_word_embeddings"]:
        W["model.embed_tokens.weight"][SPECIAL_IDS] *= 0.05
    else:
        W["lm_head.weight"] = normal((VOCAB, H), 0.5)
        W["lm_head.weight"][SPECIAL_IDS] *= 0.05
    return W


def to_torch(name: str, a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "bf16" and not name.endswith("e_score_correction_bias"):
        t = t.to(torch.bfloat16)
    return t.contiguous()


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)


def write_checkpoint(out: Path, case: dict, weights: dict[str, np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hub_config(case), indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation_config(), indent=2, sort_keys=True) + "\n")
    tensors = {k: to_torch(k, v, case["dtype"]) for k, v in weights.items()}
    n = case["n_shards"]
    if n == 1:
        save_shard(tensors, out / "model.safetensors")
        return
    # Split in Hub order into n shards of roughly equal byte size.
    names = list(tensors)
    sizes = [tensors[k].numel() * tensors[k].element_size() for k in names]
    total = sum(sizes)
    shards: list[list[str]] = [[] for _ in range(n)]
    acc = 0
    for k, s in zip(names, sizes):
        idx = min(n - 1, int(acc * n // total))
        shards[idx].append(k)
        acc += s
    assert all(shards), "empty shard"
    weight_map = {}
    for i, keys in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_shard({k: tensors[k] for k in keys}, out / fname)
        for k in keys:
            weight_map[k] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------
# transformers reference
# ---------------------------------------------------------------------------------
def load_transformers(ckpt: Path, case: dict):
    from transformers import Glm4MoeForCausalLM, GenerationConfig

    model, info = Glm4MoeForCausalLM.from_pretrained(
        str(ckpt), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    L = case["config"]["num_hidden_layers"]
    missing = list(info.get("missing_keys", []))
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    assert not missing, f"missing keys: {missing}"
    assert not mismatched, f"mismatched keys: {mismatched}"
    assert all(k.startswith(f"model.layers.{L}.") for k in unexpected), f"unexpected keys: {unexpected}"
    assert bool(unexpected) == case["mtp"], unexpected
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=N_GREEDY, eos_token_id=None, pad_token_id=PAD_ID, bos_token_id=BOS_ID
    )
    return model


def run_transformers(model, case: dict, prompts: list[list[int]]) -> dict:
    c = case["config"]
    L = c["num_hidden_layers"]
    routers = {l: model.model.layers[l].mlp.gate for l in range(c["first_k_dense_replace"], L)}
    captured: dict[int, list] = {}

    def pre_hook(layer):
        def f(module, args):
            captured.setdefault(layer, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).numpy().copy())
        return f

    def post_hook(layer):
        def f(module, args, out):
            _, w, idx = out
            captured.setdefault(f"out{layer}", []).append((w.detach().numpy().copy(), idx.detach().numpy().copy()))
        return f

    kw = dict(
        top_k=c["num_experts_per_tok"], n_group=c["n_group"], topk_group=c["topk_group"],
        norm_topk_prob=c["norm_topk_prob"], routed_scaling_factor=c["routed_scaling_factor"],
    )
    results = []
    with torch.no_grad():
        for ids in prompts:
            T = len(ids)
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            gen = model.generate(torch.tensor([ids]), generation_config=model.generation_config)
            greedy = [int(x) for x in gen[0, T:].tolist()]
            assert len(greedy) == N_GREEDY, greedy

            # Full forward over prompt + continuation, capturing router inputs/outputs.
            captured.clear()
            handles = []
            for l, r in routers.items():
                handles.append(r.register_forward_pre_hook(pre_hook(l)))
                handles.append(r.register_forward_hook(post_hook(l)))
            full = model(torch.tensor([ids + greedy])).logits[0].double().numpy()
            for h in handles:
                h.remove()

            steps = full[T - 1:T - 1 + N_GREEDY]
            top2 = -np.sort(-steps, axis=-1)[:, :2]
            logit_gap = float((top2[:, 0] - top2[:, 1]).min())
            argmax_ok = list(steps.argmax(-1)) == greedy
            prompt_maxdiff = float(np.abs(full[:T] - logits).max())

            route_gap = np.inf
            group_gap = np.inf
            zero_gap = np.inf
            disagree = []
            neg_eligible = 0
            for l, r in routers.items():
                hid = captured[l][0]
                w_t, idx_t = captured[f"out{l}"][0]
                gw = r.weight.detach().numpy()
                gb = r.e_score_correction_bias.detach().numpy()
                a = numpy_router.route(hid, gw, gb, mask_rule="-inf", **kw)
                z = numpy_router.route(hid, gw, gb, mask_rule="0", **kw)
                # our router must reproduce transformers' choice and weights
                for t in range(hid.shape[0]):
                    order = np.argsort(idx_t[t])
                    assert sorted(idx_t[t].tolist()) == sorted(a.indices[t].tolist()), (l, t)
                    mine = dict(zip(a.indices[t].tolist(), a.weights[t].tolist()))
                    theirs = w_t[t][order]
                    assert np.allclose([mine[i] for i in np.sort(idx_t[t])], theirs, rtol=1e-5, atol=1e-6)
                route_gap = min(route_gap, float(a.kth_gap.min()))
                group_gap = min(group_gap, float(a.group_gap.min()))
                zero_gap = min(zero_gap, float(z.kth_gap.min()))
                d = [x != y for x, y in zip(a.chosen_sets(), z.chosen_sets())]
                disagree += [{"layer": l, "position": t} for t, x in enumerate(d) if x]
                eligible = np.where(np.isfinite(a.masked), a.masked, np.inf)
                neg_eligible += int((eligible < 0).sum())
            results.append(dict(
                ids=list(ids), logits=logits.astype(np.float32), greedy=greedy, logit_gap=logit_gap,
                argmax_ok=argmax_ok, prompt_maxdiff=prompt_maxdiff, route_gap=route_gap,
                group_gap=group_gap, zero_gap=zero_gap, disagree=disagree, neg_eligible=neg_eligible,
            ))
    return results


def zero_rule_router_forward(self, hidden_states):
    """Glm4MoeTopkRouter.forward (transformers 5.24) with mlx-lm's rule: pruned groups -> 0.0."""
    hidden_states = hidden_states.view(-1, self.hidden_dim)
    router_logits = torch.nn.functional.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))
    scores = router_logits.sigmoid()
    scores_for_choice = scores + self.e_score_correction_bias
    group_scores = (
        scores_for_choice.view(-1, self.num_group, self.num_experts // self.num_group).topk(2, dim=-1)[0].sum(dim=-1)
    )
    group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = (
        group_mask.unsqueeze(-1).expand(-1, self.num_group, self.num_experts // self.num_group)
        .reshape(-1, self.num_experts)
    )
    scores_for_choice = scores_for_choice.masked_fill(~score_mask.bool(), 0.0)
    topk_indices = torch.topk(scores_for_choice, k=self.top_k, dim=-1, sorted=False)[1]
    topk_weights = scores.gather(1, topk_indices)
    if self.norm_topk_prob:
        topk_weights /= topk_weights.sum(dim=-1, keepdim=True) + 1e-20
    return router_logits, topk_weights * self.routed_scaling_factor, topk_indices


def transformers_zero_rule_logits(model, case: dict, prompts: list[list[int]]) -> list[np.ndarray]:
    """Prompt logits of the transformers model with its routers switched to the 0 rule."""
    import types

    c = case["config"]
    gates = [model.model.layers[l].mlp.gate for l in range(c["first_k_dense_replace"], c["num_hidden_layers"])]
    for g in gates:
        g.forward = types.MethodType(zero_rule_router_forward, g)
    try:
        with torch.no_grad():
            return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in prompts]
    finally:
        for g in gates:
            del g.forward


def check(case: dict, res: list[dict]) -> list[str]:
    """Reasons this draw of weights is rejected (empty list: accepted)."""
    bad = []
    for i, r in enumerate(res):
        if not r["argmax_ok"]:
            bad.append(f"p{i}: greedy ids != argmax of full forward")
        if r["logit_gap"] < LOGIT_GAP:
            bad.append(f"p{i}: greedy logit gap {r['logit_gap']:.2e}")
        if r["route_gap"] < ROUTING_GAP:
            bad.append(f"p{i}: k-th expert gap {r['route_gap']:.2e}")
        if r["group_gap"] < ROUTING_GAP:
            bad.append(f"p{i}: group gap {r['group_gap']:.2e}")
        if case["require_zero_rule_decided"] and r["zero_gap"] < ROUTING_GAP:
            bad.append(f"p{i}: 0-rule k-th gap {r['zero_gap']:.2e}")
        if len(set(r["greedy"])) < MIN_DISTINCT_GREEDY:
            bad.append(f"p{i}: degenerate greedy continuation ({len(set(r['greedy']))} distinct ids)")
        if set(r["greedy"]) & set(SPECIAL_IDS):
            bad.append(f"p{i}: special id generated")
    if case["require_disagreement"] and not any(r["disagree"] for r in res):
        bad.append("no -inf vs 0 disagreement")
    if case["bias"] == "negative" and not any(r["neg_eligible"] for r in res):
        bad.append("no negative eligible biased score")
    return bad


# ---------------------------------------------------------------------------------
# mlx-lm reference
# ---------------------------------------------------------------------------------
def run_mlx(ckpt: Path, prompts: list[list[int]]):
    """Returns (list of [T, vocab] float32 logits or None, note)."""
    try:
        import mlx.core as mx
        from mlx_lm.utils import load_model
    except Exception as e:  # pragma: no cover - depends on the platform
        return None, f"mlx-lm unavailable: {type(e).__name__}: {e}"
    note = ""
    try:
        model, _ = load_model(ckpt, strict=True)
    except ValueError as e:
        # mlx-lm's glm4_moe.Model always creates lm_head and has no tie support: with
        # tied embeddings the strict load fails on the missing lm_head.weight.
        if "lm_head.weight" not in str(e):
            raise
        model, _ = load_model(ckpt, strict=False)
        model.lm_head.weight = model.model.embed_tokens.weight
        note = ("mlx-lm glm4_moe has no tied-embedding support (strict load fails: "
                f"{str(e).strip()}); loaded with strict=False and lm_head.weight := embed_tokens.weight")
    model.set_dtype(mx.float32)
    out = []
    for ids in prompts:
        y = model(mx.array([ids], dtype=mx.int32))
        mx.eval(y)
        out.append(np.array(y[0].astype(mx.float32), dtype=np.float32))
    return out, note


# ---------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------
def versions() -> dict:
    import transformers

    v = {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
         "mlx_version": None, "mlx_lm_version": None}
    try:
        import mlx.core as mx
        import mlx_lm

        v["mlx_version"] = mx.__version__
        v["mlx_lm_version"] = mlx_lm.__version__
    except Exception:
        pass
    return v


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


MASK_RULE_NOTES = {
    "transformers": (
        "transformers/models/glm4_moe/modeling_glm4_moe.py Glm4MoeTopkRouter.forward: "
        "scores_for_choice = scores_for_choice.masked_fill(~score_mask.bool(), float(\"-inf\"))"
    ),
    "mlx_lm": (
        "mlx_lm/models/glm4_moe.py group_expert_select: "
        "scores = mx.put_along_axis(scores, mx.stop_gradient(group_idx), mx.array(0.0), axis=-2)"
        " (only when n_group > 1)"
    ),
}


def make_case(case: dict, vers: dict) -> dict:
    name = case["name"]
    out = FIXTURES / name
    prompt_rng = np.random.default_rng(1000 + case["seed"])
    low_ids = VOCAB - len(SPECIAL_IDS)
    prompts = [[int(x) for x in prompt_rng.integers(0, low_ids, size=n)] for n in PROMPT_LENGTHS]

    for attempt in range(MAX_ATTEMPTS):
        seed = case["seed"] * 100000 + attempt
        weights = make_weights(case, np.random.default_rng(seed))
        if out.exists():
            shutil.rmtree(out)
        write_checkpoint(out, case, weights)
        model = load_transformers(out, case)
        res = run_transformers(model, case, prompts)
        bad = check(case, res)
        if not bad:
            break
        print(f"  [{name}] attempt {attempt} (seed {seed}) rejected: {'; '.join(bad[:3])}", flush=True)
    else:
        raise SystemExit(f"{name}: no acceptable weights in {MAX_ATTEMPTS} attempts")
    print(f"  [{name}] accepted seed {seed} after {attempt + 1} attempt(s)", flush=True)

    zero_logits = transformers_zero_rule_logits(model, case, prompts)
    mlx_logits, mlx_note = run_mlx(out, prompts)

    ref = out / "reference"
    ref.mkdir()
    meta_prompts = []
    rels = []
    rels_zero = []
    for i, r in enumerate(res):
        np.save(ref / f"p{i}_transformers_logits.npy", r["logits"])
        entry = {
            "ids": r["ids"],
            "transformers_logits": f"p{i}_transformers_logits.npy",
            "mlx_logits": None,
            "greedy_ids": r["greedy"],
            "min_greedy_logit_gap": r["logit_gap"],
            "min_routing_gap": min(r["route_gap"], r["group_gap"]),
            "min_expert_choice_gap": r["route_gap"],
            "min_group_choice_gap": r["group_gap"],
            "min_expert_choice_gap_zero_rule": r["zero_gap"],
            "mask_rule_disagreements": r["disagree"],
        }
        if mlx_logits is not None:
            np.save(ref / f"p{i}_mlx_logits.npy", mlx_logits[i])
            entry["mlx_logits"] = f"p{i}_mlx_logits.npy"
            rels.append(rel_l2(mlx_logits[i], r["logits"]))
            rels_zero.append(rel_l2(mlx_logits[i], zero_logits[i]))
        meta_prompts.append(entry)

    c = case["config"]
    disagree = any(r["disagree"] for r in res)
    zero_decided = all(r["zero_gap"] >= ROUTING_GAP for r in res)
    matches = bool(rels) and max(rels) < MLX_REL_L2_TOL
    notes = []
    if mlx_logits is None:
        notes.append(mlx_note)
    elif mlx_note:
        notes.append(mlx_note)
    if disagree:
        s = ("the -inf (transformers) and 0 (mlx-lm) group-masking rules choose different experts "
             "at the positions listed in prompts[].mask_rule_disagreements, so mlx-lm differs from transformers")
        if not zero_decided:
            s += ("; there the 0 rule ties between zeroed experts of pruned groups, so mlx-lm's expert "
                  "choice (and p*_mlx_logits.npy) is implementation-defined: do not use it as a reference")
        else:
            s += "; the 0-rule choice is itself decided, so p*_mlx_logits.npy is a reference for the 0 rule"
        notes.append(s)
    meta = {
        "case": name,
        **vers,
        "weight_seed": seed,
        "checkpoint_dtype": case["dtype"],
        "group_mask_rule": {"transformers": "-inf", "mlx_lm": "0"},
        "group_mask_rule_source": MASK_RULE_NOTES,
        "mask_rules_disagree": disagree,
        "zero_rule_choice_decided": zero_decided,
        "mlx_matches_transformers": matches,
        "mlx_vs_transformers_rel_l2": rels if mlx_logits is not None else None,
        # transformers with its router patched to mlx-lm's 0 rule (not stored; a check
        # that the masking rule is the only difference). Meaningful only where
        # zero_rule_choice_decided is true.
        "mlx_vs_transformers_zero_rule_rel_l2": rels_zero if mlx_logits is not None else None,
        "mlx_notes": notes,
        "routing_gap_threshold": ROUTING_GAP,
        "logit_gap_threshold": LOGIT_GAP,
        "greedy": {"max_new_tokens": N_GREEDY, "eos": "ignored (eos_token_id=None); special-token rows of "
                   "lm_head are scaled by 0.05 so they are never argmax"},
        "rotary_dim": int(c["head_dim"] * c["partial_rotary_factor"]),
        "positions": "mask_rule_disagreements[].position indexes ids + greedy_ids (the prompt, then the continuation)",
        "prompts": meta_prompts,
    }
    # Strict JSON: a gap that does not exist (no groups to choose) is null, not Infinity.
    (ref / "meta.json").write_text(json.dumps(finite_or_null(meta), indent=2, allow_nan=False) + "\n")
    print(f"  [{name}] mlx rel L2 {rels} (vs 0-rule transformers {rels_zero}) disagree={disagree} "
          f"matches={matches}", flush=True)
    return meta


DEMO_README = """# tiny-random GLM-4 MoE checkpoint

Random weights (not a trained model) in the Hugging Face Hub layout of a GLM-4 MoE
(`model_type` "glm4_moe", `Glm4MoeForCausalLM`) checkpoint: BF16 tensors (the router
correction biases in F32), sharded into three `model-0000i-of-00003.safetensors` files
with a `model.safetensors.index.json`, plus `config.json` and `generation_config.json`.
4 layers (2 dense + 2 MoE with 16 experts in 4 groups) and one multi-token-prediction
layer, vocab 512, hidden 64. It produces meaningless tokens; it exists to demo and
test the loader and the forward pass.

Made by `tools/make_fixtures.py` (copy of `tests/fixtures/grouped_bf16_sharded/`, whose
`reference/` folder holds transformers and mlx-lm outputs for it). Regenerate with
`python tools/make_fixtures.py`.
"""


def write_demo() -> None:
    src = FIXTURES / DEMO_CASE
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, DEMO_DIR / f.name)
    (DEMO_DIR / "README.md").write_text(DEMO_README)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    vers = versions()
    print(f"versions: {vers}", flush=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])          # optional: case names to regenerate (development aid)
    for case in CASES:
        if not only or case["name"] in only:
            make_case(case, vers)
    if not only or DEMO_CASE in only:
        write_demo()
    print("done", flush=True)


if __name__ == "__main__":
    main()
