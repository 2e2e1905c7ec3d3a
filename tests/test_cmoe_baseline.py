"""The CMoE baseline follows the authors' code: normalised markers, 10 % of d_ff, balanced k-means."""

import math

import numpy as np
import pytest
import torch

from clustering.cmoe import balanced_marker_kmeans, markers, normalized_scores
from routers.base import RouterContext
from routers.representative import build, representatives

pytestmark = pytest.mark.unit


def test_markers_are_ten_percent_of_neurons_per_token():
    scores = torch.rand(50, 96)
    marks = markers(scores)
    assert (marks.sum(axis=1) == math.ceil(0.1 * 96)).all()
    top = torch.topk(scores, 10, dim=1).indices.numpy()
    assert all(marks[t, top[t]].all() for t in range(50))


def test_normalised_scores_ignore_token_and_weight_norms():
    g = torch.Generator().manual_seed(0)
    x, up, gate = torch.randn(20, 8, generator=g), torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    base = normalized_scores(x, up, gate, "silu")
    scaled = normalized_scores(x * torch.rand(20, 1) * 9, up * torch.rand(12, 1) * 9, gate * 3, "silu")
    torch.testing.assert_close(base, scaled)
    assert (base >= 0).all()


def test_balanced_kmeans_recovers_co_marking_groups():
    rng = np.random.default_rng(0)
    S, E, m = 400, 4, 6
    topic = rng.integers(0, E, S)  # each token marks mostly one group's neurons
    marks = np.zeros((S, E * m), dtype=np.float32)
    for t in range(S):
        marks[t, topic[t] * m : (topic[t] + 1) * m] = rng.random(m) < 0.8
        marks[t, rng.integers(0, E * m, 2)] = 1.0  # noise
    perm = rng.permutation(E * m)
    assign = balanced_marker_kmeans(marks[:, perm], np.arange(E), m, rounds=10)
    assert (np.bincount(assign, minlength=E) == m).all()
    groups = {frozenset((perm[assign == e] // m).tolist()) for e in range(E)}
    assert groups == {frozenset([e]) for e in range(E)}


def test_representative_router_scores_by_absolute_activation_of_the_most_central_member():
    g = torch.Generator().manual_seed(1)
    n, d, E = 24, 8, 4
    up, gate, x = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(300, d, generator=g)
    experts = torch.arange(n).view(E, n // E)
    ctx = RouterContext(x=x, h=torch.zeros(300, n), up=up, down=torch.zeros(d, n), gate=gate,
                        shared=torch.empty(0, dtype=torch.long), experts=experts, importance=torch.ones(n),
                        num_experts_per_tok=1)
    rep = representatives(ctx)
    marks = torch.from_numpy(markers(normalized_scores(x, up, gate, "silu")))
    for e in range(E):
        members = marks[:, experts[e]]
        dist = (members - members.mean(1, keepdim=True)).abs().sum(0)
        assert dist[(experts[e] == rep[e]).nonzero().item()] == dist.min()
    router = build(ctx)
    scores = router(x)
    assert (scores >= 0).all()
    unit = lambda w: w / w.norm(dim=1, keepdim=True)  # noqa: E731
    want = (torch.nn.functional.silu(x @ unit(gate[rep]).T) * (x @ unit(up[rep]).T)).abs()
    torch.testing.assert_close(scores, want)
