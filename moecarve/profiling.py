"""Streaming per-neuron statistics of one FFN (pure tensor math; the hooks live in sequential.py).

Memory is O(n + S·(n + d)) whatever the number of calibration tokens: running sums plus a
fixed-size uniform reservoir sample of tokens (random priority keys, keep the S smallest).
"""

from __future__ import annotations

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
        n, d = ffn.num_neurons, ffn.hidden_size
        self.marker_top_k = min(marker_top_k, n)
        self.sample_tokens = sample_tokens
        self.count = 0
        self.markers = torch.zeros(n, dtype=torch.float64)
        self.sum_abs = torch.zeros(n, dtype=torch.float64)
        self.sum_sq = torch.zeros(n, dtype=torch.float64)
        self.keys = torch.empty(0)
        self.sample_x = torch.empty(0, d)
        self.sample_h = torch.empty(0, n)
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update(self, x: torch.Tensor, h: torch.Tensor | None = None) -> None:
        """Add FFN inputs ``x`` (T, d) and, when the caller has them, their activations ``h`` (T, n)."""
        x = x.reshape(-1, x.shape[-1]).float()
        h = self.ffn.hidden(x, self.act).float() if h is None else h.reshape(x.shape[0], -1).float()
        a = h.abs()
        self.count += x.shape[0]
        self.sum_abs += a.sum(0, dtype=torch.float64)
        self.sum_sq += (h * h).sum(0, dtype=torch.float64)
        top = torch.topk(a, self.marker_top_k, dim=1).indices.reshape(-1)
        self.markers += torch.bincount(top, minlength=h.shape[1]).double()
        self._reservoir(x, h)

    def _reservoir(self, x: torch.Tensor, h: torch.Tensor) -> None:
        keys = torch.rand(x.shape[0], generator=self.generator)
        if self.keys.numel() >= self.sample_tokens:  # full: only keys below the largest kept can enter
            enter = keys < self.keys.max()
            keys, x, h = keys[enter], x[enter], h[enter]
        keys = torch.cat([self.keys, keys])
        keep = torch.argsort(keys)[: self.sample_tokens]
        self.keys = keys[keep]
        self.sample_x = torch.cat([self.sample_x, x])[keep]
        self.sample_h = torch.cat([self.sample_h, h])[keep]

    def finalize(self) -> LayerProfile:
        if self.count == 0:
            raise ValueError("no calibration tokens reached this layer")
        f = self.ffn
        return LayerProfile(
            num_tokens=self.count,
            rate=(self.markers / self.count).numpy(),
            mean_abs=(self.sum_abs / self.count).numpy(),
            mean_sq=(self.sum_sq / self.count).numpy(),
            down_norm=f.down.float().norm(dim=0).double().numpy(),
            sample_h=self.sample_h.numpy(),
            sample_x=self.sample_x.numpy(),
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
