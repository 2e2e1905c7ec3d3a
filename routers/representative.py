"""``representative``: CMoE's training-free router — one representative neuron per expert.

As in the authors' code (``CMoE_utils`` / ``CMoE_model.Router``): with CMoE's normalised markers
(``clustering.cmoe``), each expert's representative is the member whose marker vector is closest
in L1 to the expert's mean marker vector; the router scores the expert by the *absolute*
activation of that neuron with unit-norm rows, |act(x·ĝ)·(x·û)| (|act(x·û)| for plain FFNs), on
the raw FFN input. (Their softmax over these scores does not change the top-k choice; the experts
keep weight 1.) Not linear in x, so this router exists in the reference format only.
Option: ``marker_fraction`` (default 0.1, as the partition).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from clustering.cmoe import MARKER_FRACTION, markers, normalized_scores
from routers.base import Router, RouterContext


class RepresentativeRouter(Router):
    kind = "representative"

    def __init__(self, hidden_size: int, num_experts: int, gated: bool = True, activation: str = "silu") -> None:
        super().__init__()
        self.up = nn.Parameter(torch.zeros(num_experts, hidden_size), requires_grad=False)  # (E, d) unit rows
        self.gate = nn.Parameter(torch.zeros(num_experts, hidden_size), requires_grad=False) if gated else None
        self.activation = activation
        self.act = ACT2FN[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = nn.functional.linear(x, self.up)  # (T, E)
        if self.gate is None:
            return self.act(u).abs()
        return (self.act(nn.functional.linear(x, self.gate)) * u).abs()

    def config(self) -> dict[str, Any]:
        E, d = self.up.shape
        return {"hidden_size": d, "num_experts": E, "gated": self.gate is not None, "activation": self.activation}


def representatives(ctx: RouterContext, fraction: float = MARKER_FRACTION) -> torch.Tensor:
    """(E,) neuron index of each expert's member closest (L1) to the expert's mean marker vector."""
    marks = torch.from_numpy(markers(normalized_scores(ctx.x, ctx.up, ctx.gate, ctx.activation), fraction))
    members = marks[:, ctx.experts]  # (S, E, m)
    centre = members.mean(dim=2, keepdim=True)  # (S, E, 1)
    best = (members - centre).abs().sum(dim=0).argmin(dim=1)  # (E,)
    return ctx.experts.gather(1, best[:, None]).squeeze(1)


def build(ctx: RouterContext) -> RepresentativeRouter:
    rep = representatives(ctx, float(ctx.options.get("marker_fraction", MARKER_FRACTION)))
    router = RepresentativeRouter(ctx.x.shape[1], ctx.num_experts, ctx.gate is not None, ctx.activation)
    unit = lambda w: w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    with torch.no_grad():
        router.up.copy_(unit(ctx.up[rep].float()))
        if ctx.gate is not None:
            router.gate.copy_(unit(ctx.gate[rep].float()))
    return router
