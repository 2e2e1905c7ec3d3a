"""Canonical view of a dense FFN, whatever the architecture stores.

A neuron ``i`` is row ``i`` of the up (and gate) projection and column ``i`` of the down projection:
``h = act(W_g x + b_g) ⊙ (W_u x + b_u)`` (gated) or ``h = act(W_u x + b_u)`` (plain), ``y = W_d h + b_d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from moecarve.architectures import ArchSpec


@dataclass
class FFNWeights:
    up: torch.Tensor  # (n, d)
    down: torch.Tensor  # (d, n)
    activation: str
    gate: torch.Tensor | None = None  # (n, d)
    up_bias: torch.Tensor | None = None  # (n,)
    gate_bias: torch.Tensor | None = None  # (n,)
    down_bias: torch.Tensor | None = None  # (d,)

    @property
    def num_neurons(self) -> int:
        return self.up.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.up.shape[1]

    def act_fn(self) -> nn.Module:
        return ACT2FN[self.activation]

    def hidden(self, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
        """Neuron activations ``h``: (T, d) → (T, n)."""
        act = act or self.act_fn()
        u = nn.functional.linear(x, self.up, self.up_bias)
        if self.gate is None:
            return act(u)
        return act(nn.functional.linear(x, self.gate, self.gate_bias)) * u

    def output(self, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
        """Dense FFN output: (T, d) → (T, d)."""
        return nn.functional.linear(self.hidden(x, act), self.down, self.down_bias)


def submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _weight_bias(module: nn.Module, conv1d: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = module.weight.detach()
    if conv1d:  # GPT-2 Conv1D stores (in, out)
        w = w.t()
    b = getattr(module, "bias", None)
    return w.contiguous(), (None if b is None else b.detach())


def extract_ffn(layer: nn.Module, arch: ArchSpec, activation: str) -> FFNWeights:
    """Read one decoder layer's FFN into the canonical form (views of the model's tensors)."""
    up, up_b = _weight_bias(submodule(layer, arch.up), arch.conv1d)
    down, down_b = _weight_bias(submodule(layer, arch.down), arch.conv1d)
    gate = gate_b = None
    if arch.fused_gate_up:  # Phi-3: [gate; up] in one projection
        n = up.shape[0] // 2
        gate, up = up[:n], up[n:]
        if up_b is not None:
            gate_b, up_b = up_b[:n], up_b[n:]
    elif arch.gate is not None:
        gate, gate_b = _weight_bias(submodule(layer, arch.gate), arch.conv1d)
    return FFNWeights(
        up=up,
        down=down,
        activation=activation,
        gate=gate,
        up_bias=up_b,
        gate_bias=gate_b,
        down_bias=down_b,
    )
