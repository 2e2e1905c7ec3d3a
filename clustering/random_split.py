"""``random``: LLaMA-MoE's random split — shared = top marker rate, routed = a random balanced split."""

from __future__ import annotations

import numpy as np

from clustering.base import LayerProfile, Partition, PartitionRequest, top_shared


def partition(profile: LayerProfile, request: PartitionRequest) -> Partition:
    shared, rest = top_shared(profile.rate, request.num_shared)
    rng = np.random.default_rng(request.seed)
    experts = rng.permutation(rest).reshape(request.num_experts, request.expert_size)
    return Partition(shared=shared, experts=np.sort(experts, axis=1))
