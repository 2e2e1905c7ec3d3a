"""``representative``: CMoE's training-free router — one representative neuron per expert.

An expert's representative is its neuron with the highest marker rate on the calibration sample
(CMoE's cluster centre); the router scores an expert by that neuron's activation
act(x·g)·(x·u) (act(x·u) for plain FFNs), so an expert is chosen when its most typical neuron
fires. Not linear in x, so this router exists in the reference format only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from routers.base import Router, RouterContext


class RepresentativeRouter(Router):
    kind = "representative"

    def __init__(self, hidden_size: int, num_experts: int, gated: bool = True, activation: str = "silu") -> None:
        super().__init__()
        self.up = nn.Parameter(torch.zeros(num_experts, hidden_size), requires_grad=False)  # (E, d)
        self.gate = nn.Parameter(torch.zeros(num_experts, hidden_size), requires_grad=False) if gated else None
        self.activation = activation
        self.act = ACT2FN[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = nn.functional.linear(x, self.up)  # (T, E)
        if self.gate is None:
            return self.act(u)
        return self.act(nn.functional.linear(x, self.gate)) * u

    def config(self) -> dict[str, Any]:
        E, d = self.up.shape
        return {"hidden_size": d, "num_experts": E, "gated": self.gate is not None, "activation": self.activation}


def representatives(ctx: RouterContext, top_k: int = 10) -> torch.Tensor:
    """(E,) neuron index of each expert's highest-marker-rate neuron."""
    top = torch.topk(ctx.h.abs(), min(top_k, ctx.h.shape[1]), dim=1).indices
    rate = torch.bincount(top.reshape(-1), minlength=ctx.h.shape[1])  # (n,)
    best = rate[ctx.experts].argmax(dim=1)  # (E,)
    return ctx.experts.gather(1, best[:, None]).squeeze(1)


def build(ctx: RouterContext) -> RepresentativeRouter:
    rep = representatives(ctx, int(ctx.options.get("marker_top_k", 10)))
    router = RepresentativeRouter(ctx.x.shape[1], ctx.num_experts, ctx.gate is not None, ctx.options.get("activation", "silu"))
    with torch.no_grad():
        router.up.copy_(ctx.up[rep])
        if ctx.gate is not None:
            router.gate.copy_(ctx.gate[rep])
    return router
