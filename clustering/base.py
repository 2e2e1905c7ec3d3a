"""What a partition method sees and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class LayerProfile:
    """Per-neuron calibration statistics of one FFN layer (n neurons, d hidden, S sampled tokens).

    ``importance`` is output-aware: E[h_i²]·‖W_down[:, i]‖², the expected squared norm of neuron
    ``i``'s contribution to the layer output.
    """

    num_tokens: int
    rate: np.ndarray  # (n,) share of tokens where the neuron is among the top-K |h| ("marker")
    mean_abs: np.ndarray  # (n,) E|h|
    mean_sq: np.ndarray  # (n,) E[h²]
    down_norm: np.ndarray  # (n,) ‖W_down[:, i]‖
    sample_h: np.ndarray  # (S, n) activations on a bounded sample of tokens
    sample_x: np.ndarray  # (S, d) the FFN inputs of those tokens
    up: np.ndarray  # (n, d) up / fc1 rows
    gate: np.ndarray | None = None  # (n, d) gate rows of gated FFNs
    sample_y: np.ndarray | None = None  # (S, d) the dense FFN's outputs on them (no down bias), when profiled
    marker_top_k: int = 10
    activation: str = "silu"  # the FFN's activation function (ACT2FN name)

    @property
    def importance(self) -> np.ndarray:
        return self.mean_sq * self.down_norm**2

    @property
    def num_neurons(self) -> int:
        return self.rate.shape[0]


@dataclass
class PartitionRequest:
    num_shared: int  # neurons in the shared expert
    num_experts: int  # routed experts E
    expert_size: int  # neurons per routed expert m
    num_experts_per_tok: int  # k (methods that optimise for the router's top-k may use it)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Partition:
    shared: np.ndarray  # (s,) neuron indices
    experts: np.ndarray  # (E, m) neuron indices

    def validate(self, num_neurons: int, request: PartitionRequest | None = None) -> Partition:
        """Every neuron exactly once; equal routed sizes (the block's invariant)."""
        flat = np.concatenate([self.shared.ravel(), self.experts.ravel()])
        if flat.size != num_neurons or not np.array_equal(np.sort(flat), np.arange(num_neurons)):
            raise ValueError("partition must cover every neuron exactly once")
        if request is not None:
            want = (request.num_experts, request.expert_size)
            if self.experts.shape != want or self.shared.size != request.num_shared:
                raise ValueError(
                    f"partition shapes {self.experts.shape}/{self.shared.size} != {want}/{request.num_shared}"
                )
        return self


class PartitionFn(Protocol):
    def __call__(self, profile: LayerProfile, request: PartitionRequest) -> Partition: ...


def top_shared(score: np.ndarray, num_shared: int) -> tuple[np.ndarray, np.ndarray]:
    """Split neuron indices into the ``num_shared`` highest-``score`` ones and the rest (both sorted)."""
    order = np.argsort(-score, kind="stable")
    return np.sort(order[:num_shared]), np.sort(order[num_shared:])
