"""Refine a partition against the router that will serve it (alternating optimisation).

Given the routing of the sampled tokens, neuron i placed in expert e contributes to exactly the
tokens that select e. Its marginal gain on token t (how much it lowers the squared error of the
shared expert's output against the dense output) is

    g_ti = 2 h_ti ⟨r_t, w_i⟩ − h_ti² ‖w_i‖²,   r_t = dense output − shared output,

so the gain of the placement is G[i, e] = Σ_{t selects e} g_ti — an (n × E) matrix, and the best
equal-size placement under that routing is a balanced assignment on it. Re-fitting the router to
the new experts changes the routing, so the two steps alternate; each round is scored by the
captured expert gain of the resulting router and the best round is kept. Interactions between
neurons of co-selected experts are ignored in the assignment step (the score counts them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from clustering.balanced import balanced_assign, groups_from_assignment

# (experts (E, m)) → (selections of the sampled tokens (S, k), score: higher is better)
RouteFn = Callable[[torch.Tensor], tuple[torch.Tensor, float]]


def neuron_gains(h: torch.Tensor, down: torch.Tensor, projection: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """(S, len(routed)) marginal gain of each routed neuron on each sampled token, from the
    activations ``h`` (S, n), ``down`` (d, n) and ⟨r_t, w_i⟩ for the neurons ``routed``, in that
    order (``projection``, (S, len(routed)))."""
    hr = h[:, routed]
    return 2 * hr * projection - hr.square() * down[:, routed].square().sum(0)


def refine_experts(
    experts: torch.Tensor, gains: torch.Tensor, routed: torch.Tensor, route: RouteFn, rounds: int
) -> tuple[torch.Tensor, int]:
    """Alternate balanced re-placement and re-routing ``rounds`` times; returns the best experts
    (E, m) by ``route``'s score and the round it came from (0 = the input partition).

    ``gains`` (S, n_r) are ``neuron_gains`` for the neurons ``routed`` (n_r,), in that order."""
    E, m = experts.shape
    selected, best_score = route(experts)
    best, best_round = experts, 0
    for r in range(1, rounds + 1):
        chosen = torch.zeros(gains.shape[0], E, dtype=gains.dtype).scatter_(1, selected, 1.0)
        placement = (chosen.t() @ gains).t()  # (n_r, E)
        assign = balanced_assign(-placement.double().numpy(), m)
        placed = torch.from_numpy(groups_from_assignment(routed.numpy(), assign, E).astype(np.int64))
        if torch.equal(placed, experts):  # a fixed point: the same routing would follow
            break
        experts = placed
        selected, score = route(experts)
        if score > best_score:
            best, best_score, best_round = experts, score, r
    return best, best_round
