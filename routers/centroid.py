"""``centroid``: MoEfication-style similarity router, no training.

Each expert's router row is the importance-weighted mean of its neurons' unit-norm input rows
(gate rows for gated FFNs, fc1 rows otherwise): a token scores an expert by how well it aligns
with the directions that switch that expert's neurons on.
"""

from __future__ import annotations

import torch

from routers.base import RouterContext
from routers.linear import LinearRouter


def build(ctx: RouterContext) -> LinearRouter:
    rows = ctx.gate if ctx.gate is not None else ctx.up  # (n, d)
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    weight = ctx.importance.clamp_min(0)[ctx.experts]  # (E, m)
    weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(1e-12)
    centroids = torch.einsum("em,emd->ed", weight, unit[ctx.experts])  # (E, d)
    router = LinearRouter(ctx.x.shape[1], ctx.num_experts)
    with torch.no_grad():
        router.weight.copy_(centroids)
    return router
