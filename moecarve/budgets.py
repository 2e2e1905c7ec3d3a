"""Layer budgets: move active neurons to the layers where skipping them costs most.

Same total active FFN as the uniform layout; per layer, the active units are chosen before carving.
Two ways to measure a layer's cost curve ``e_ℓ(a)`` (what keeping only its ``a`` most important
units' worth of neurons costs) and its weight ``w_ℓ``:

- ``layer_budgets: sensitivity`` (the default with ``active_fraction``): each neuron's Taylor
  importance for the dense model's next-token loss, Σ_t (∂L/∂h_ti · h_ti)², from one backward pass
  over a few calibration tokens (``taylor_importance``); ``e_ℓ(a)`` = the importance its top ``a``
  units leave out (``importance_curve``), ``w_ℓ`` = 1. The gradient already says how much the
  later layers amplify or absorb a layer's error, so the curves of different layers compare.
- ``layer_budgets: adaptive``: importance E[h_i²]·‖W_down[:, i]‖² on one dense calibration window,
  ``e_ℓ(a)`` = the share of the layer's FFN output energy left out (cross terms ignored), weighted
  by ``w_ℓ = E‖y_ℓ‖² / E‖r_ℓ‖²``, the FFN output's energy relative to the residual stream it writes
  into (r = the layer's output).

**Allocation** (``allocate``): minimise Σ_ℓ w_ℓ·e_ℓ(a_ℓ) under Σ_ℓ a_ℓ = the uniform total, each a_ℓ
between half the uniform count and all units. Every e_ℓ is convex in a (importances sorted), so
giving one unit at a time to the largest marginal gain is optimal.

Each layer's layout then follows the budget-first rule (``layouts.layout_for_units``). Layers
set by ``overrides`` keep their layouts and are not counted.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


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


def importance_curve(importance: torch.Tensor, units: int) -> list[float]:
    """e(a) for a = 0..units: the summed ``importance`` (n,) of the neurons outside the ``a`` most
    important units' worth (absolute, so curves of different layers compare directly)."""
    size = importance.numel() // units
    ranked = torch.sort(importance.double(), descending=True).values[: units * size].reshape(units, size).sum(1)
    left = ranked.sum() - torch.cat([torch.zeros(1, dtype=ranked.dtype), ranked.cumsum(0)])
    return left.clamp_min(0).tolist()


def taylor_importance(
    model: nn.Module, downs: dict[int, nn.Module], chunks: Sequence[torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Per layer, each FFN neuron's second-order Taylor (empirical Fisher) importance for the LM loss:
    ``Σ_t (∂L/∂h_{t,i} · h_{t,i})²`` over the tokens of ``chunks`` (each (L,) token ids), where h_i is
    the neuron's activation entering the down projection ``downs[layer]`` and L the next-token loss
    on the chunk. It estimates the loss increase from removing the neuron (Molchanov et al. 2019,
    "Importance Estimation for Neural Network Pruning"); unlike an output-energy share it accounts
    for how much the rest of the network amplifies or absorbs the layer's error, so it compares
    layers. No weight gets a gradient: the graph starts at the input embeddings.
    """
    scores = {i: torch.zeros(0) for i in downs}

    def tap(i: int) -> Any:
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            h = args[0] if args else next(iter(kwargs.values()))
            if h.requires_grad:
                def grad(g: torch.Tensor, h: torch.Tensor = h) -> None:
                    s = (g.detach().float() * h.detach().float()).pow(2).reshape(-1, h.shape[-1]).sum(0).double()
                    scores[i] = s if scores[i].numel() == 0 else scores[i] + s
                h.register_hook(grad)
        return pre

    embed = model.get_input_embeddings()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # no weight gradients: activations' gradients only
        p.requires_grad_(False)
    handles = [m.register_forward_pre_hook(tap(i), with_kwargs=True) for i, m in downs.items()]
    handles.append(embed.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_(True)))
    try:
        with torch.enable_grad():
            for ids in chunks:
                logits = model(input_ids=ids.unsqueeze(0), use_cache=False).logits[0, :-1].float()
                torch.nn.functional.cross_entropy(logits, ids[1:]).backward()
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
    return scores
