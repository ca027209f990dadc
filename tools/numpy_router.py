"""Reference NumPy implementation of the GLM-4 MoE router ("noaux_tc" top-k routing).

Used by tools/make_fixtures.py to check that every routing decision recorded in the
test fixtures is decided by a clear margin, and to find tokens where the two known
group-masking rules pick different experts.

Routing, per token (computed here in float64):

    scores  = sigmoid(hidden @ gate_weight.T)                  # [E]
    biased  = scores + e_score_correction_bias                 # used only for the choice
    group_score[g] = sum of the top-2 biased scores in group g # E split into n_group equal groups
    keep the topk_group best groups; in the other groups set biased to
        -inf  (transformers Glm4MoeTopkRouter)  or
        0.0   (mlx-lm group_expert_select)
    chosen  = the top_k experts by (masked) biased score
    weights = scores[chosen] (unbiased), divided by their sum if norm_topk_prob,
              then multiplied by routed_scaling_factor

Gaps reported (a routing decision is "decided" when its gap is large):
    kth_gap   = k-th minus (k+1)-th masked biased score (inf when fewer than k+1
                candidates are finite)
    group_gap = topk_group-th minus (topk_group+1)-th group score (inf when n_group == 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MASK_RULES = ("-inf", "0")


@dataclass
class Routing:
    scores: np.ndarray        # [T, E] sigmoid(router logits)
    biased: np.ndarray        # [T, E] scores + correction bias
    group_scores: np.ndarray  # [T, n_group]
    group_keep: np.ndarray    # [T, n_group] bool, groups that stay eligible
    masked: np.ndarray        # [T, E] biased scores after group masking
    indices: np.ndarray       # [T, k] chosen experts, by decreasing masked score
    weights: np.ndarray       # [T, k] routing weights for `indices`
    kth_gap: np.ndarray       # [T]
    group_gap: np.ndarray     # [T]

    def chosen_sets(self) -> list[frozenset]:
        return [frozenset(int(i) for i in row) for row in self.indices]


def route(
    hidden: np.ndarray,
    gate_weight: np.ndarray,
    correction_bias: np.ndarray,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
    mask_rule: str = "-inf",
) -> Routing:
    """Route hidden states [T, H] (the input of the gate) to experts."""
    if mask_rule not in MASK_RULES:
        raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {mask_rule!r}")
    h = np.asarray(hidden, dtype=np.float64).reshape(-1, gate_weight.shape[1])
    w = np.asarray(gate_weight, dtype=np.float64)
    b = np.asarray(correction_bias, dtype=np.float64)
    n_tok, n_exp = h.shape[0], w.shape[0]
    if n_exp % n_group:
        raise ValueError("n_routed_experts must be divisible by n_group")
    per_group = n_exp // n_group

    logits = h @ w.T
    scores = 1.0 / (1.0 + np.exp(-logits))
    biased = scores + b

    grouped = biased.reshape(n_tok, n_group, per_group)
    top2 = -np.sort(-grouped, axis=-1)[..., :2]
    group_scores = top2.sum(axis=-1)  # [T, G]
    order_g = np.argsort(-group_scores, axis=-1, kind="stable")
    group_keep = np.zeros((n_tok, n_group), dtype=bool)
    np.put_along_axis(group_keep, order_g[:, :topk_group], True, axis=-1)
    if n_group > topk_group:
        sg = np.take_along_axis(group_scores, order_g, axis=-1)
        group_gap = sg[:, topk_group - 1] - sg[:, topk_group]
    else:
        group_gap = np.full(n_tok, np.inf)

    expert_keep = np.repeat(group_keep, per_group, axis=-1)
    fill = -np.inf if mask_rule == "-inf" else 0.0
    masked = np.where(expert_keep, biased, fill)

    order_e = np.argsort(-masked, axis=-1, kind="stable")
    indices = order_e[:, :top_k]
    sm = np.take_along_axis(masked, order_e, axis=-1)
    if top_k < n_exp:
        nxt = sm[:, top_k]
        kth_gap = np.where(np.isfinite(nxt), sm[:, top_k - 1] - nxt, np.inf)
    else:
        kth_gap = np.full(n_tok, np.inf)

    weights = np.take_along_axis(scores, indices, axis=-1)
    if norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    weights = weights * routed_scaling_factor

    return Routing(scores, biased, group_scores, group_keep, masked, indices, weights, kth_gap, group_gap)


def rules_disagree(hidden, gate_weight, correction_bias, **kw) -> np.ndarray:
    """Bool [T]: True where the -inf and the 0 masking rules choose different expert sets."""
    a = route(hidden, gate_weight, correction_bias, mask_rule="-inf", **kw).chosen_sets()
    z = route(hidden, gate_weight, correction_bias, mask_rule="0", **kw).chosen_sets()
    return np.array([x != y for x, y in zip(a, z)], dtype=bool)


if __name__ == "__main__":  # tiny self-check
    rng = np.random.default_rng(0)
    hid = rng.standard_normal((5, 8))
    gw = rng.standard_normal((8, 8))
    bias = np.array([0.5, -1.2, 0.5, -1.2, -1.2, -1.2, -1.2, -1.2])
    kw = dict(top_k=4, n_group=4, topk_group=3, norm_topk_prob=True, routed_scaling_factor=2.0)
    r = route(hid, gw, bias, **kw)
    assert np.allclose(r.weights.sum(-1), 2.0)
    print("indices\n", r.indices, "\ndisagree", rules_disagree(hid, gw, bias, **kw))
