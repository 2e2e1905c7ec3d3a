"""Routing statistics of MoE blocks, accumulated over the tokens they see.

Per layer: expert load (share of routed slots), load coefficient of variation, max/mean, load
entropy, mean router entropy, relative FFN reconstruction error vs the dense FFN (all neurons),
recall of dense activation mass (Σ|h_i|·‖W_down[:, i]‖ over active neurons ÷ over all neurons),
the shares of output norm carried by the shared and routed parts, and expert co-selection counts.

The dense reference is the *original* FFN: every neuron with the dense down projection. The block's
own down projections are not a reference once ``correction.refit_down`` has re-solved them for
the routed subsets, so the carving loop passes the dense outputs it profiled and the pipeline
passes the dense down projection (``reference_down``). It is recomputed here in one pass:
diagnostics, not the compute path.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moecarve.moe import MoEBlock


class RoutingRecorder:
    """``reference_down`` (d, n, block order): the dense FFN's down projection, when the block's
    differs from it (refit); else the block's own is the dense one."""

    def __init__(self, num_experts: int, reference_down: torch.Tensor | None = None) -> None:
        E = num_experts
        self.reference_down = None if reference_down is None else reference_down.float()
        self.tokens = 0
        self.load = torch.zeros(E, dtype=torch.float64)
        self.coselect = torch.zeros(E, E, dtype=torch.float64)
        self.router_entropy = 0.0
        self.err_sq = 0.0
        self.dense_sq = 0.0
        self.mass_active = 0.0
        self.mass_total = 0.0
        self.shared_norm = 0.0
        self.routed_norm = 0.0

    @torch.no_grad()
    def __call__(
        self,
        block: MoEBlock,
        x: torch.Tensor,
        scores: torch.Tensor,
        selected: torch.Tensor,
        h: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
    ) -> None:
        """Record one batch; ``h`` (T, n, block order) are every neuron's activations on ``x``
        when the caller already has them (the carving loop does), else they are recomputed;
        ``dense`` (T, d): the dense FFN's outputs without the down bias, when the caller has them."""
        x = x.float()
        T, E = x.shape[0], block.num_experts
        onehot = torch.zeros(T, E, dtype=torch.float64).scatter_(1, selected, 1.0)
        self.tokens += T
        self.load += onehot.sum(0)
        self.coselect += onehot.t() @ onehot
        logp = torch.log_softmax(scores.double(), dim=-1)
        self.router_entropy += float(-(logp.exp() * logp).sum())

        # every neuron's activation at once (block order: shared, then experts): diagnostics only
        up, ub, gate, gb, down = _all_neurons(block, with_inputs=h is None)
        if h is None:
            h = block._hidden(x, up, ub, gate, gb)  # (T, n)
        s = block.shared_size
        bias = 0.0 if block.down_bias is None else block.down_bias.double()
        ref = down if self.reference_down is None else self.reference_down
        dense = (h @ ref.t() if dense is None else dense.float()).double() + bias
        shared = (h[:, :s] @ down[:, :s].t()).double() + bias
        moe = shared + block.routed_from_activations(h, selected).double()
        mass = h.abs() * ref.norm(dim=0)  # (T, n): the dense neurons' output mass
        mass_all = mass.sum(1, dtype=torch.float64)
        per_expert = mass[:, s:].reshape(T, E, block.expert_size).sum(-1, dtype=torch.float64)  # (T, E)
        mass_sel = mass[:, :s].sum(1, dtype=torch.float64) + per_expert.gather(1, selected).sum(1)
        self.err_sq += float(((moe - dense) ** 2).sum())
        self.dense_sq += float((dense**2).sum())
        self.mass_active += float(mass_sel.sum())
        self.mass_total += float(mass_all.sum())
        self.shared_norm += float(shared.norm(dim=1).sum())
        self.routed_norm += float((moe - shared).norm(dim=1).sum())

    def summary(self) -> dict[str, Any]:
        E = self.load.numel()
        share = self.load / self.load.sum().clamp_min(1e-12)
        mean = share.mean()
        p = share[share > 0]
        norms = self.shared_norm + self.routed_norm
        return {
            "tokens": self.tokens,
            "expert_load": _rounded(share),
            "load_cv": float(share.std(unbiased=False) / mean) if E > 1 else 0.0,
            "load_max_over_mean": float(share.max() / mean),
            "load_entropy": float(-(p * p.log()).sum() / math.log(E)) if E > 1 else 1.0,
            "router_entropy": self.router_entropy
            / max(self.tokens, 1)
            / (math.log(E) if E > 1 else 1.0),
            "never_selected": [int(e) for e in torch.nonzero(self.load == 0).flatten()],
            "reconstruction_error": self.err_sq / max(self.dense_sq, 1e-30),
            "recall": self.mass_active / max(self.mass_total, 1e-30),
            "shared_output_share": self.shared_norm / norms if norms else 0.0,
            "coselection": _rounded(self.coselect / max(self.tokens, 1)),
        }


def _rounded(t: torch.Tensor) -> list[Any]:
    """``t`` as nested lists of floats rounded to 6 decimals, in one vectorised pass (per-element
    ``round`` took ~0.2 s per layer for the E × E co-selection matrix at E = 312)."""
    return torch.round(t.double(), decimals=6).tolist()


def _all_neurons(block: MoEBlock, with_inputs: bool = True) -> tuple[Any, ...]:
    """Shared and routed weights concatenated in block order: (n, d) up / gate, (d, n) down
    (only the down projection unless ``with_inputs``)."""

    def cat(shared: torch.Tensor | None, experts: torch.Tensor | None) -> torch.Tensor | None:
        if not with_inputs or shared is None or experts is None:
            return None
        return torch.cat([shared, experts.reshape(-1, *experts.shape[2:])]).float()

    down = torch.cat([block.shared_down, block.experts_down.permute(1, 0, 2).reshape(block.hidden_size, -1)], dim=1)
    return (
        cat(block.shared_up, block.experts_up),
        cat(block.shared_up_bias, block.experts_up_bias),
        cat(block.shared_gate, block.experts_gate),
        cat(block.shared_gate_bias, block.experts_gate_bias),
        down.float(),
    )
