"""What a router method sees and the module it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

GAIN_ROWS = 1024  # tokens per block of RouterContext.expert_gain


class Router(nn.Module):
    """Scores routed experts: (T, d) → (T, E). Subclasses set ``kind`` and implement ``config``."""

    kind: ClassVar[str]

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable) to rebuild an empty router."""
        raise NotImplementedError


@dataclass
class RouterContext:
    """One layer's data for building a router (S tokens, n neurons, E experts of m). The tokens are
    every calibration token when the carve kept their activations, else the profile's sample."""

    x: torch.Tensor  # (S, d) FFN inputs
    h: torch.Tensor  # (S, n) neuron activations
    up: torch.Tensor  # (n, d)
    down: torch.Tensor  # (d, n)
    gate: torch.Tensor | None  # (n, d)
    shared: torch.Tensor  # (s,)
    experts: torch.Tensor  # (E, m)
    importance: torch.Tensor  # (n,) E[h²]·‖W_down[:, i]‖²
    num_experts_per_tok: int
    y: torch.Tensor | None = None  # (S, d) dense FFN outputs without bias, when profiled (else recomputed)
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    activation: str = "silu"  # the FFN's activation (routers built from neuron rows need it)
    cache: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False)  # shared by replace()

    @property
    def num_experts(self) -> int:
        return self.experts.shape[0]

    def expert_outputs(self, e: int) -> torch.Tensor:
        """(S, d) routed expert ``e``'s true output on each token."""
        idx = self.experts[e]
        return self.h[:, idx] @ self.down[:, idx].t()

    def expert_gain(self) -> torch.Tensor:
        """(S, E) drop in squared reconstruction error from adding each expert to the shared output.

        With r the part of the dense output not produced by the shared expert and y_e expert e's
        output, the gain is ‖r‖² − ‖r − y_e‖² = 2⟨r, y_e⟩ − ‖y_e‖²: unlike ‖y_e‖ it credits only
        the part of an expert's output that the token actually needs.
        """
        # keyed by the experts' content: partition refinement scores each candidate partition
        # with the gains its router was just fitted on
        key = ("expert_gain", id(self.h), id(self.down), id(self.shared), self.experts.numpy().tobytes())
        if key in self.cache:
            return self.cache[key]
        E, m = self.experts.shape
        flat = self.experts.reshape(-1)
        routed = self.routed_neurons
        column = torch.empty(self.down.shape[1], dtype=torch.long)
        column[routed] = torch.arange(routed.numel())
        # views, not copies, when the context is in block order (the carve's): experts contiguous
        he = columns(self.h, flat)  # (S, E·m)
        proj = columns(self.residual_projection(), column[flat])  # (S, E·m) ⟨r, w_i⟩
        w = self.down[:, self.experts].permute(1, 0, 2)  # (E, d, m)
        grams = w.transpose(1, 2) @ w  # (E, m, m)
        gain = torch.empty(he.shape[0], E, dtype=he.dtype)
        # Σ_i h_i (2⟨r, w_i⟩ − (G_e h)_i) = 2⟨r, y_e⟩ − ‖y_e‖², every expert at once on blocks of
        # GAIN_ROWS tokens (the temporaries stay in cache: 1.5× faster than one expert at a time
        # at E = 312, m = 4 over 16k tokens, same values)
        for lo in range(0, he.shape[0], GAIN_ROWS):
            rows = slice(lo, lo + GAIN_ROWS)
            h3 = he[rows].reshape(-1, E, m)
            quad = torch.einsum("tem,emn->ten", h3, grams)
            gain[rows] = (h3 * (2 * proj[rows].reshape(-1, E, m) - quad)).sum(-1)
        self.cache[key] = gain
        return gain

    @property
    def routed_neurons(self) -> torch.Tensor:
        """(n_r,) the neurons outside the shared expert, ascending."""
        keep = torch.ones(self.down.shape[1], dtype=torch.bool)
        keep[self.shared] = False
        return torch.nonzero(keep).flatten()

    def residual_projection(self) -> torch.Tensor:
        """(S, n_r) ⟨r_t, W_down[:, i]⟩ for the routed neurons i (``routed_neurons`` order), with
        r_t the dense output minus the shared expert's output (without bias): the routed neurons'
        summed output. Depends on the shared expert only, so contexts that differ in their routed
        experts (``dataclasses.replace``, as partition refinement does) share one computation."""
        key = ("residual_projection", id(self.h), id(self.down), id(self.shared))
        if key not in self.cache:
            routed = self.routed_neurons
            w = self.down[:, routed]
            if self.y is None or routed.numel() <= self.shared.numel():
                r = columns(self.h, routed) @ w.t()  # (S, d): the cheaper side of y = shared + routed
            else:
                r = self.y.float() - columns(self.h, self.shared) @ self.down[:, self.shared].t()
            self.cache[key] = r @ w
        return self.cache[key]

    def expert_contribution(self) -> torch.Tensor:
        """(S, E) norm of each routed expert's true output on each token."""
        out = []
        for e in range(self.num_experts):
            idx = self.experts[e]
            out.append((self.h[:, idx] @ self.down[:, idx].t()).norm(dim=-1))
        return torch.stack(out, dim=1)


def columns(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[:, index]``: a view when ``index`` is an ascending run of consecutive columns, else a copy."""
    n = index.numel()
    if n and int(index[-1]) - int(index[0]) == n - 1 and (n == 1 or bool((index.diff() == 1).all())):
        return t[:, int(index[0]) : int(index[0]) + n]
    return t[:, index]


class RouterBuilder(Protocol):
    def __call__(self, ctx: RouterContext) -> Router: ...
