"""Aux-loss-free load balancing (DeepSeek-V3): a per-expert bias used only for selection.

Fitted on calibration routing: experts chosen more often than average get their bias lowered,
under-used ones raised, by a step that shrinks over the iterations.
"""

from __future__ import annotations

import torch


def fit_selection_bias(scores: torch.Tensor, k: int, iters: int = 100, rate: float = 0.3) -> torch.Tensor:
    """Bias (E,) that evens top-k load on ``scores`` (S, E)."""
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
