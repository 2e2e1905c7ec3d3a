"""``cmoe``: CMoE's activation-marker grouping (Pei et al. 2025, "Fast Carving of MoE").

Per sampled token the ``marker_top_k`` largest |activations| are its markers; a neuron's marker
vector is the binary (S,) indicator of the tokens it marks. Shared expert = the highest marker
rate. Of the rest, the ``E`` highest-rate neurons are cluster centres and every neuron joins one
centre by a single balanced assignment on the L1 distance between marker vectors (for binary
vectors ‖a − b‖₁ = |a| + |b| − 2 a·b, so the (n, E) cost needs no n × n matrix).
"""

from __future__ import annotations

import numpy as np

from clustering.balanced import balanced_assign, groups_from_assignment
from clustering.base import LayerProfile, Partition, PartitionRequest, top_shared


def marker_matrix(sample_h: np.ndarray, top_k: int) -> np.ndarray:
    """(S, n) binary markers: each token's ``top_k`` largest |h|."""
    a = np.abs(sample_h)
    top = np.argpartition(-a, min(top_k, a.shape[1] - 1), axis=1)[:, :top_k]
    marks = np.zeros(a.shape, dtype=np.float32)
    np.put_along_axis(marks, top, 1.0, axis=1)
    return marks


def partition(profile: LayerProfile, request: PartitionRequest) -> Partition:
    shared, rest = top_shared(profile.rate, request.num_shared)
    marks = marker_matrix(profile.sample_h, profile.marker_top_k)[:, rest]  # (S, r)
    order = np.argsort(-profile.rate[rest], kind="stable")
    centres = order[: request.num_experts]
    count = marks.sum(axis=0)  # (r,)
    cost = count[:, None] + count[None, centres] - 2.0 * (marks.T @ marks[:, centres])  # (r, E) L1
    assign = balanced_assign(cost, request.expert_size)
    return Partition(shared=shared, experts=groups_from_assignment(rest, assign, request.num_experts))
