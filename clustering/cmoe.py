"""``cmoe``: CMoE's activation-marker grouping (Pei et al. 2025, "Fast Carving of MoE").

Faithful to the authors' public code (``CMoE_utils``), not only the paper's summary:
- activations are *normalised* before marking: token inputs and each neuron's gate / up rows are
  scaled to unit length, so a neuron's score is |act(x̂·ĝ_i)·(x̂·û_i)| (weight norms do not count);
- each token marks its ``ceil(marker_fraction · n)`` highest-scoring neurons (10 % of d_ff in their
  code; the ``--k-act 10`` flag is not read by the carving path);
- shared expert = the highest marker rates; of the rest, the ``E`` highest-rate neurons seed the
  centres; then balanced k-means on marker vectors: L1 distance to each centre (the mean marker
  vector of its members), one exact-capacity assignment per round, up to ``kmeans_rounds`` = 10
  rounds, until the total cost moves by < 0.1 %. For binary markers m and centres c in [0, 1],
  ‖m − c‖₁ = Σm + Σc − 2 m·c, so the (n, E) cost needs no n × n matrix (their solver builds one).
Options: ``marker_fraction`` (default 0.1), ``kmeans_rounds`` (default 10). Biases are ignored in
the normalised score (CMoE supports Llama only).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers.activations import ACT2FN

from clustering.balanced import balanced_assign, groups_from_assignment
from clustering.base import LayerProfile, Partition, PartitionRequest, top_shared

MARKER_FRACTION = 0.1
KMEANS_ROUNDS = 10


def _unit(a: torch.Tensor) -> torch.Tensor:
    return a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def normalized_scores(
    x: np.ndarray | torch.Tensor, up: np.ndarray | torch.Tensor, gate: np.ndarray | torch.Tensor | None, activation: str
) -> torch.Tensor:
    """(S, n) |act(x̂·ĝ)·(x̂·û)| (|act(x̂·û)| for plain FFNs) with unit-norm tokens and rows."""
    xn = _unit(torch.as_tensor(x).float())
    u = xn @ _unit(torch.as_tensor(up).float()).T
    act = ACT2FN[activation]
    if gate is None:
        return act(u).abs()
    return (act(xn @ _unit(torch.as_tensor(gate).float()).T) * u).abs()


def markers(scores: torch.Tensor, fraction: float = MARKER_FRACTION) -> np.ndarray:
    """(S, n) binary float32: each token's ``ceil(fraction · n)`` highest scores."""
    n = scores.shape[1]
    k = min(n, max(1, math.ceil(fraction * n)))
    top = torch.topk(scores, k, dim=1).indices
    return torch.zeros(scores.shape).scatter_(1, top, 1.0).numpy()


def balanced_marker_kmeans(marks: np.ndarray, centres: np.ndarray, capacity: int, rounds: int) -> np.ndarray:
    """(r,) cluster of each column of ``marks`` (S, r), starting from columns ``centres`` (E,)."""
    marks_t = marks.T.astype(np.float64)  # (r, S), converted once for every round's products
    C = marks[:, centres].astype(np.float64)  # (S, E) centre marker vectors
    count = marks_t.sum(axis=1)  # (r,)
    prev = None
    assign = np.zeros(marks.shape[1], dtype=np.int64)
    for _ in range(max(1, rounds)):
        cost = count[:, None] + C.sum(axis=0)[None, :] - 2.0 * (marks_t @ C)  # (r, E)
        assign = balanced_assign(cost, capacity)
        total = float(cost[np.arange(cost.shape[0]), assign].sum())
        C = np.stack([marks[:, assign == e].mean(axis=1) for e in range(C.shape[1])], axis=1)
        if prev is not None and abs(prev - total) <= 1e-3 * max(abs(prev), 1e-12):
            break
        prev = total
    return assign


def partition(profile: LayerProfile, request: PartitionRequest) -> Partition:
    opts = request.options
    scores = normalized_scores(profile.sample_x, profile.up, profile.gate, profile.activation)
    marks = markers(scores, float(opts.get("marker_fraction", MARKER_FRACTION)))
    rate = marks.mean(axis=0)
    shared, rest = top_shared(rate, request.num_shared)
    if request.num_experts == 0:
        return Partition(shared=shared, experts=np.empty((0, request.expert_size), dtype=np.int64))
    sub = marks[:, rest]  # (S, r)
    centres = np.argsort(-rate[rest], kind="stable")[: request.num_experts]
    assign = balanced_marker_kmeans(sub, centres, request.expert_size, int(opts.get("kmeans_rounds", KMEANS_ROUNDS)))
    return Partition(shared=shared, experts=groups_from_assignment(rest, assign, request.num_experts))
