"""Aux-loss-free load balancing (DeepSeek-V3): a per-expert bias used only for selection.

Fitted on calibration routing: experts chosen more often than average get their bias lowered,
under-used ones raised, by a step that shrinks over the iterations.
"""

from __future__ import annotations

import torch


def fit_selection_bias(scores: torch.Tensor, k: int, iters: int = 30, rate: float = 0.3) -> torch.Tensor:
    """Bias (E,) that evens top-k load on ``scores`` (S, E).

    30 iterations: on SmolLM2 layers 3 / 15 / 27 at S24A8E128 the load CV over all 16k calibration
    tokens was 0.044 / 0.049 / 0.060 after 30, 0.042 / 0.049 / 0.058 after 100 (each a top-k over
    the sample, the costliest step of building a block).
    """
    S, E = scores.shape
    scale = scores.std().clamp_min(1e-6)
    bias = torch.zeros(E, dtype=scores.dtype)
    target = S * k / E
    for i in range(iters):
        sel = torch.topk(scores + bias, k, dim=1).indices
        load = torch.bincount(sel.reshape(-1), minlength=E).to(scores.dtype)
        bias += rate * scale * (1 - i / iters) * torch.sign(target - load)
    return bias


def load_cv(selected: torch.Tensor, num_experts: int) -> float:
    """Coefficient of variation of expert load for selections (T, k)."""
    load = torch.bincount(selected.reshape(-1), minlength=num_experts).double()
    return float(load.std(unbiased=False) / load.mean().clamp_min(1e-12))
