"""Streaming per-neuron statistics of one FFN (pure tensor math; the hooks live in sequential.py).

Memory is O(n + S·(n + d)) whatever the number of calibration tokens: running sums plus a
fixed-size uniform reservoir sample of tokens (random priority keys, keep the S smallest).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clustering.base import LayerProfile
from moecarve.ffn import FFNWeights


class NeuronStats:
    """Accumulates activation statistics of ``ffn`` over chunks of FFN inputs."""

    def __init__(
        self, ffn: FFNWeights, marker_top_k: int = 10, sample_tokens: int = 4096, seed: int = 0
    ) -> None:
        self.ffn = ffn
        self.act = ffn.act_fn()
        n = ffn.num_neurons
        self.marker_top_k = min(marker_top_k, n)
        self.sample_tokens = sample_tokens
        self.count = 0
        self.markers = torch.zeros(n, dtype=torch.float64)
        self.sum_abs = torch.zeros(n, dtype=torch.float64)
        self.sum_sq = torch.zeros(n, dtype=torch.float64)
        # the reservoir: S slots in arrival order (sorted by key once, in finalize); +inf = empty
        self.keys = torch.full((sample_tokens,), math.inf)
        self.slots: list[torch.Tensor] | None = None  # [x (S, d), h (S, n), y (S, d) when given]
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, x: torch.Tensor, h: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        """Add FFN inputs ``x`` (T, d) and, when the caller has them, their activations ``h`` (T, n)
        and the dense FFN's outputs ``y`` (T, d; kept for the sampled tokens, less the down bias).
        Either every call passes ``y`` or none does."""
        x = x.reshape(-1, x.shape[-1]).float()
        h = self.ffn.hidden(x, self.act).float() if h is None else h.reshape(x.shape[0], -1).float()
        a = h.abs()
        self.count += x.shape[0]
        # fp32 (pairwise) sums within the call, fp64 across calls: a dtype=float64 reduction
        # converts every element and took 4× as long
        self.sum_abs += a.sum(0).double()
        self.sum_sq += (h * h).sum(0).double()
        top = torch.topk(a, self.marker_top_k, dim=1).indices.reshape(-1)
        self.markers += torch.bincount(top, minlength=h.shape[1]).double()
        if self.slots is not None and (len(self.slots) == 3) != (y is not None):
            raise ValueError("pass the FFN output y with every update or with none")
        rows = [x, h]
        if y is not None:
            y = y.reshape(x.shape).float()
            rows.append(y if self.ffn.down_bias is None else y - self.ffn.down_bias.float())
        self._reservoir(rows)

    def _reservoir(self, rows: list[torch.Tensor]) -> None:
        """Keep the S tokens with the smallest random keys seen so far. Entering tokens overwrite
        the slots of the keys they displace, so a call moves only the rows that enter."""
        keys = torch.rand(rows[0].shape[0], generator=self.generator)
        if self.slots is None:
            self.slots = [torch.empty(self.sample_tokens, r.shape[1]) for r in rows]
        S = self.sample_tokens
        kept = torch.topk(torch.cat([self.keys, keys]), S, largest=False).indices
        enter = kept[kept >= S] - S  # new tokens that make the sample
        staying = torch.zeros(S, dtype=torch.bool)
        staying[kept[kept < S]] = True
        freed = torch.nonzero(~staying).flatten()  # as many slots as entering tokens
        self.keys[freed] = keys[enter]
        for slot, r in zip(self.slots, rows, strict=True):
            slot[freed] = r[enter]

    def finalize(self) -> LayerProfile:
        if self.count == 0 or self.slots is None:
            raise ValueError("no calibration tokens reached this layer")
        filled = torch.nonzero(self.keys < math.inf).flatten()
        order = filled[torch.argsort(self.keys[filled])]  # ascending keys: the order is seed-determined
        sample = [slot[order].numpy() for slot in self.slots]
        f = self.ffn
        return LayerProfile(
            num_tokens=self.count,
            rate=(self.markers / self.count).numpy(),
            mean_abs=(self.sum_abs / self.count).numpy(),
            mean_sq=(self.sum_sq / self.count).numpy(),
            down_norm=f.down.float().norm(dim=0).double().numpy(),
            sample_h=sample[1],
            sample_x=sample[0],
            sample_y=sample[2] if len(sample) == 3 else None,
            up=f.up.float().numpy(),
            gate=None if f.gate is None else f.gate.float().numpy(),
            marker_top_k=self.marker_top_k,
            activation=f.activation,
        )


def profile_summary(profile: LayerProfile) -> dict[str, list[float] | int]:
    """Compact per-neuron statistics saved with the checkpoint (dashboards read them)."""
    return {
        "tokens": profile.num_tokens,
        "marker_top_k": profile.marker_top_k,
        "rate": np.round(profile.rate, 6).tolist(),
        "importance": np.round(profile.importance, 8).tolist(),
    }
