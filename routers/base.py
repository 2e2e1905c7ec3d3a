"""What a router method sees and the module it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn


class Router(nn.Module):
    """Scores routed experts: (T, d) → (T, E). Subclasses set ``kind`` and implement ``config``."""

    kind: ClassVar[str]

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable) to rebuild an empty router."""
        raise NotImplementedError


@dataclass
class RouterContext:
    """One layer's data for building a router (S sampled tokens, n neurons, E experts of m)."""

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
        """(S, d) routed expert ``e``'s true output on each sampled token."""
        idx = self.experts[e]
        return self.h[:, idx] @ self.down[:, idx].t()

    def expert_gain(self) -> torch.Tensor:
        """(S, E) drop in squared reconstruction error from adding each expert to the shared output.

        With r the part of the dense output not produced by the shared expert and y_e expert e's
        output, the gain is ‖r‖² − ‖r − y_e‖² = 2⟨r, y_e⟩ − ‖y_e‖²: unlike ‖y_e‖ it credits only
        the part of an expert's output that the token actually needs.
        """
        E, m = self.experts.shape
        he = self.h[:, self.experts]  # (S, E, m)
        cross = (he * self.residual_projection()[:, self.experts]).sum(-1)  # (S, E) ⟨r, y_e⟩
        w = self.down[:, self.experts].permute(1, 0, 2)  # (E, d, m)
        grams = w.transpose(1, 2) @ w  # (E, m, m)
        sq = ((he.transpose(0, 1) @ grams) * he.transpose(0, 1)).sum(-1).t()  # (S, E) ‖y_e‖²
        return 2 * cross - sq

    def residual_projection(self) -> torch.Tensor:
        """(S, n) ⟨r_t, W_down[:, i]⟩ with r_t the dense output minus the shared expert's output
        (without bias). Depends on the shared expert only, so contexts that differ in their routed
        experts (``dataclasses.replace``, as partition refinement does) share one computation."""
        key = ("residual_projection", id(self.h), id(self.down), id(self.shared))
        if key not in self.cache:
            r = self.h @ self.down.t() if self.y is None else self.y.float()  # (S, d) dense output without bias
            if self.shared.numel():
                r = r - self.h[:, self.shared] @ self.down[:, self.shared].t()
            self.cache[key] = r @ self.down
        return self.cache[key]

    def expert_contribution(self) -> torch.Tensor:
        """(S, E) norm of each routed expert's true output on each sampled token."""
        out = []
        for e in range(self.num_experts):
            idx = self.experts[e]
            out.append((self.h[:, idx] @ self.down[:, idx].t()).norm(dim=-1))
        return torch.stack(out, dim=1)


class RouterBuilder(Protocol):
    def __call__(self, ctx: RouterContext) -> Router: ...
