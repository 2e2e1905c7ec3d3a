"""``weight_kmeans``: MoEfication's parameter clustering — balanced k-means on normalised input rows.

Each neuron is represented by its unit-norm input row (gate row for gated FFNs, fc1 row
otherwise); neurons whose rows point the same way tend to fire together. MoEfication has no
shared expert: when the layout asks for one it takes the highest output-aware importance.
"""

from __future__ import annotations

import numpy as np

from clustering.balanced import groups_from_assignment
from clustering.base import LayerProfile, Partition, PartitionRequest, top_shared
from clustering.coact import balanced_kmeans


def partition(profile: LayerProfile, request: PartitionRequest) -> Partition:
    shared, rest = top_shared(profile.importance, request.num_shared)
    rows = profile.gate if profile.gate is not None else profile.up  # (n, d)
    feats = rows[rest] / np.maximum(np.linalg.norm(rows[rest], axis=1, keepdims=True), 1e-12)
    assign = balanced_kmeans(feats, request.num_experts, request.seed, int(request.options.get("iters", 15)))
    return Partition(shared=shared, experts=groups_from_assignment(rest, assign, request.num_experts))
