"""``coact``: output-weighted co-activation clustering (moecarve's first method).

Shared expert = the neurons with the largest output-aware importance E[h²]·‖W_down[:, i]‖².
Routed experts = balanced spherical k-means over each neuron's *output-weighted activation
profile* on the calibration sample (|h_ti|·‖W_down[:, i]‖ over tokens t): neurons that carry
output on the same tokens land in the same expert, so a token's mass concentrates in few experts.
"""

from __future__ import annotations

import numpy as np

from clustering.balanced import balanced_assign, groups_from_assignment
from clustering.base import LayerProfile, Partition, PartitionRequest, top_shared

MAX_FEATURES = (
    256  # random projection of the token axis (Johnson–Lindenstrauss) keeps k-means cheap
)


def neuron_features(profile: LayerProfile, neurons: np.ndarray, seed: int) -> np.ndarray:
    """(len(neurons), f) unit-norm co-activation profiles."""
    feats = np.abs(profile.sample_h[:, neurons]).T * profile.down_norm[neurons, None]  # (n, S)
    if feats.shape[1] > MAX_FEATURES:
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((feats.shape[1], MAX_FEATURES)) / np.sqrt(MAX_FEATURES)
        feats = feats @ proj
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.maximum(norms, 1e-12)


def balanced_kmeans(feats: np.ndarray, groups: int, seed: int, iters: int = 15) -> np.ndarray:
    """Spherical k-means with equal cluster sizes; returns (n,) cluster ids."""
    n = feats.shape[0]
    rng = np.random.default_rng(seed)
    assign = rng.permutation(np.arange(n) % groups)
    for _ in range(iters):
        centroids = np.stack([feats[assign == g].mean(axis=0) for g in range(groups)])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        new = balanced_assign(-feats @ centroids.T, n // groups)
        if np.array_equal(new, assign):
            break
        assign = new
    return assign


def partition(profile: LayerProfile, request: PartitionRequest) -> Partition:
    shared, rest = top_shared(profile.importance, request.num_shared)
    feats = neuron_features(profile, rest, request.seed)
    assign = balanced_kmeans(
        feats, request.num_experts, request.seed, int(request.options.get("iters", 15))
    )
    return Partition(
        shared=shared, experts=groups_from_assignment(rest, assign, request.num_experts)
    )
