"""A linear router: scores = x Wᵀ + b."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from routers.base import Router


class LinearRouter(Router):
    kind = "linear"

    def __init__(self, hidden_size: int, num_experts: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.zeros(num_experts, hidden_size), requires_grad=False
        )  # (E, d)
        self.bias = nn.Parameter(torch.zeros(num_experts), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)  # (T, E)

    def config(self) -> dict[str, Any]:
        E, d = self.weight.shape
        return {"hidden_size": d, "num_experts": E, "bias": self.bias is not None}
