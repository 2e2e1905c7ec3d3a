import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import clustering
from clustering.balanced import balanced_assign
from clustering.base import LayerProfile, PartitionRequest

pytestmark = pytest.mark.unit


def random_profile(n: int, d: int = 8, samples: int = 40, seed: int = 0) -> LayerProfile:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((samples, n)) * rng.gamma(1.0, size=n)
    return LayerProfile(
        num_tokens=samples,
        rate=rng.random(n),
        mean_abs=np.abs(h).mean(0),
        mean_sq=(h**2).mean(0),
        down_norm=rng.random(n) + 0.1,
        sample_h=h.astype(np.float32),
        sample_x=rng.standard_normal((samples, d)).astype(np.float32),
        up=rng.standard_normal((n, d)).astype(np.float32),
        gate=rng.standard_normal((n, d)).astype(np.float32),
    )


layouts = st.tuples(st.integers(1, 12), st.integers(0, 4), st.integers(1, 6)).map(
    lambda t: (t[0], t[1], t[2])  # (E, S, m)
)


@pytest.mark.parametrize("method", clustering.registry.names())
@settings(max_examples=15, deadline=None)
@given(layout=layouts, seed=st.integers(0, 10_000))
def test_partition_properties(method, layout, seed):
    E, S, m = layout
    n = (E + S) * m
    profile = random_profile(n, seed=seed)
    request = PartitionRequest(
        num_shared=S * m, num_experts=E, expert_size=m, num_experts_per_tok=1, seed=seed
    )
    part = clustering.registry.get(method)(profile, request)
    part.validate(n, request)  # covers every neuron once, equal routed sizes
    flat = np.concatenate([part.shared, part.experts.ravel()])
    assert np.array_equal(np.sort(flat), np.arange(n))
    assert part.experts.shape == (E, m)
    again = clustering.registry.get(method)(profile, request)
    assert np.array_equal(part.shared, again.shared) and np.array_equal(part.experts, again.experts)


def test_validate_rejects_overlap_and_gaps():
    from clustering.base import Partition

    with pytest.raises(ValueError, match="exactly once"):
        Partition(shared=np.array([0]), experts=np.array([[0, 1]])).validate(3)


@settings(max_examples=25, deadline=None)
@given(E=st.integers(1, 6), cap=st.integers(1, 5), seed=st.integers(0, 1000))
def test_balanced_assign_is_balanced_and_near_optimal(E, cap, seed):
    rng = np.random.default_rng(seed)
    cost = rng.random((E * cap, E))
    a = balanced_assign(cost, cap)
    assert np.array_equal(np.bincount(a, minlength=E), np.full(E, cap))
    rows, cols = linear_sum_assignment(np.repeat(cost, cap, axis=1))  # exact optimum (small n only)
    optimum = cost[rows, cols // cap].sum()
    got = cost[np.arange(E * cap), a].sum()
    assert got <= optimum * 1.10 + 1e-9


def test_balanced_assign_scales_without_n_by_n():
    rng = np.random.default_rng(0)
    n, E = 28_672, 224  # Llama-70B-sized FFN, hundreds of experts
    cost = rng.random((n, E)).astype(np.float32)
    a = balanced_assign(cost, n // E, iters=50)
    assert np.array_equal(np.bincount(a, minlength=E), np.full(E, n // E))


def test_coact_kmeans_plus_plus_start_finds_planted_groups_better_than_a_random_start():
    """Non-negative co-activation profiles share a common component that hides the groups; from
    k-means++ centres more of the planted groups come back than from a random balanced start."""
    from clustering.coact import balanced_kmeans

    groups, size, dim = 64, 8, 64
    planted = np.repeat(np.arange(groups), size)

    def purity(assign: np.ndarray) -> float:  # share of neurons in their group's majority
        return sum(np.bincount(planted[assign == g]).max() for g in range(groups)) / planted.size

    for noise, want in [(1.0, 0.99), (2.0, 0.3)]:
        rng = np.random.default_rng(0)
        centres = np.abs(rng.standard_normal((groups, dim)))
        feats = np.repeat(centres, size, axis=0) + 3 + noise * np.abs(rng.standard_normal((planted.size, dim)))
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        plus = purity(balanced_kmeans(feats, groups, seed=0, init="kmeans++"))
        assert plus >= want and plus > purity(balanced_kmeans(feats, groups, seed=0, init="random")) + 0.05
    with pytest.raises(ValueError, match="unknown coact init"):
        balanced_kmeans(feats, groups, seed=0, init="bogus")


@pytest.mark.unit
def test_refinement_raises_the_captured_gain_of_a_perturbed_partition():
    """Tokens of type j use only the neurons of planted group j. From a partition with neurons
    swapped between groups, alternating re-placement and re-routing (an oracle k = 1 router)
    raises the captured gain and returns an equal-size partition of the same neurons. It is a
    local search: here it repairs one swap and keeps the other (the tokens that route to the
    misplaced neuron's expert are the ones where that neuron is strongest, so the routing
    reinforces the placement)."""
    import torch

    from clustering.refine import neuron_gains, refine_experts

    E, m, d, S = 4, 3, 256, 400  # wide: neuron outputs nearly orthogonal
    g = torch.Generator().manual_seed(0)
    routed = torch.arange(E * m)
    types = torch.arange(S) % E
    h = torch.rand(S, E * m, generator=g) * (routed // m == types[:, None])  # (S, n): planted
    down = torch.randn(d, E * m, generator=g)
    projection = (h @ down.t()) @ down  # no shared expert: r_t is the dense output

    def gain(experts: torch.Tensor) -> torch.Tensor:  # (S, E) drop in squared error per expert
        y = h @ down.t()
        out = [((y**2).sum(1) - ((y - h[:, e] @ down[:, e].t()) ** 2).sum(1)) for e in experts]
        return torch.stack(out, dim=1)

    def route(experts: torch.Tensor) -> tuple[torch.Tensor, float]:
        g_ = gain(experts)
        selected = g_.argmax(1, keepdim=True)
        return selected, float(g_.gather(1, selected).sum())

    scrambled = routed.view(E, m).clone()
    scrambled[0, 0], scrambled[1, 1] = 4, 0  # swap a neuron between groups 0 and 1 ...
    scrambled[2, 2], scrambled[3, 0] = 9, 8  # ... and between groups 2 and 3
    gains = neuron_gains(h, down, projection, routed)
    best, round_kept = refine_experts(scrambled, gains, routed, route, rounds=5)
    assert sorted(best.reshape(-1).tolist()) == routed.tolist() and best.shape == (E, m)
    assert round_kept > 0 and route(best)[1] > 1.1 * route(scrambled)[1]
    rows = {frozenset(row.tolist()) for row in best}
    assert {frozenset({0, 1, 2}), frozenset({3, 4, 5})} <= rows
