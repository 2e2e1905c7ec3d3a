"""Layer-adaptive budgets: move active neurons to the layers where skipping them costs most.

``moe: {active_fraction: f, layer_budgets: adaptive}``. Same total active FFN as the uniform
layout; per layer, the active units are chosen before carving from one dense calibration window:

- **cost curve** of layer ℓ: keeping its ``a`` most important units' worth of neurons (importance
  E[h_i²]·‖W_down[:, i]‖², the output-aware score the partition also uses) leaves out a share
  ``e_ℓ(a)`` of the layer's FFN output energy (cross terms ignored);
- **weight** of layer ℓ: its FFN output energy relative to the residual stream it writes into,
  ``w_ℓ = E‖y_ℓ‖² / E‖r_ℓ‖²`` (r = the layer's output): an error that is small next to the
  stream moves the model little;
- **allocation**: minimise Σ_ℓ w_ℓ·e_ℓ(a_ℓ) under Σ_ℓ a_ℓ = the uniform total, each a_ℓ between
  half the uniform count and all units. Every e_ℓ is convex in a (importances sorted), so giving
  one unit at a time to the largest marginal gain is optimal.

Each layer's layout then follows the budget-first rule (``layouts.layout_for_units``). Layers
set by ``overrides`` keep their layouts and are not counted.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch


@dataclass
class LayerCost:
    """One layer's cost curve and weight: ``curve[a]`` = e(a) for a = 0..units."""

    curve: list[float]
    weight: float


def cost_curve(h: torch.Tensor, down: torch.Tensor, units: int) -> list[float]:
    """e(a) for a = 0..units from activations ``h`` (T, n) and the down projection (d, n)."""
    imp = (h.double() ** 2).mean(0) * down.double().norm(dim=0) ** 2  # (n,)
    size = imp.numel() // units
    ranked = torch.sort(imp, descending=True).values.reshape(units, size).sum(1)
    kept = torch.cat([torch.zeros(1, dtype=ranked.dtype), ranked.cumsum(0)])
    return (1 - kept / kept[-1].clamp_min(1e-30)).clamp_min(0).tolist()


def allocate(costs: list[LayerCost], total: int, lo: list[int], hi: list[int]) -> list[int]:
    """Units per layer minimising Σ w·e(a) with Σ a = ``total`` and ``lo ≤ a ≤ hi`` per layer."""
    if not sum(lo) <= total <= sum(hi):
        raise ValueError(f"cannot place {total} units within per-layer bounds {sum(lo)}..{sum(hi)}")
    alloc = list(lo)
    heap = [(-_gain(c, a), i) for i, (c, a) in enumerate(zip(costs, alloc, strict=True)) if a < hi[i]]
    heapq.heapify(heap)
    for _ in range(total - sum(lo)):
        _, i = heapq.heappop(heap)
        alloc[i] += 1
        if alloc[i] < hi[i]:
            heapq.heappush(heap, (-_gain(costs[i], alloc[i]), i))
    return alloc


def _gain(cost: LayerCost, a: int) -> float:
    return cost.weight * (cost.curve[a] - cost.curve[a + 1])
