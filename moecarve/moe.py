"""The MoE block that replaces a dense FFN (DESIGN.md §3).

Experts partition the FFN's neurons: an always-on shared expert plus ``E`` equal routed experts.
The router scores the routed experts, ``top-k(scores + selection_bias)`` picks ``k`` per token and
each selected expert contributes with weight 1, so with ``k = E`` the block equals the dense FFN.
Only the selected experts' weights are used: tokens are grouped by expert and each group is
multiplied by that expert's (m × d) slices — never a dense product that is masked afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from moecarve.ffn import FFNWeights

Recorder = Callable[["MoEBlock", torch.Tensor, torch.Tensor, torch.Tensor], None]


class MoEBlock(nn.Module):
    """Shared expert + top-k routed experts with unit weights.

    Shapes: ``d`` hidden size, ``s`` shared neurons, ``E`` routed experts of ``m`` neurons each.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        shared_size: int,
        num_experts: int,
        expert_size: int,
        num_experts_per_tok: int,
        gated: bool,
        activation: str,
        up_bias: bool,
        down_bias: bool,
        router: nn.Module | None,
    ) -> None:
        super().__init__()
        if num_experts and not 1 <= num_experts_per_tok <= num_experts:
            raise ValueError(f"need 1 <= k <= E, got k={num_experts_per_tok}, E={num_experts}")
        d, s, E, m = hidden_size, shared_size, num_experts, expert_size
        self.hidden_size, self.shared_size = d, s
        self.num_experts, self.expert_size, self.num_experts_per_tok = E, m, num_experts_per_tok
        self.gated, self.activation = gated, activation
        self.act = ACT2FN[activation]

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape), requires_grad=False)

        self.shared_up = param(s, d)
        self.shared_gate = param(s, d) if gated else None
        self.shared_down = param(d, s)
        self.shared_up_bias = param(s) if up_bias else None
        self.shared_gate_bias = param(s) if up_bias and gated else None
        self.down_bias = param(d) if down_bias else None
        self.experts_up = param(E, m, d)  # (E, m, d)
        self.experts_gate = param(E, m, d) if gated else None
        self.experts_down = param(E, d, m)  # (E, d, m)
        self.experts_up_bias = param(E, m) if up_bias else None
        self.experts_gate_bias = param(E, m) if up_bias and gated else None
        self.router = router
        self.register_buffer(
            "selection_bias", torch.zeros(E)
        )  # only for selection (aux-loss-free balance)
        self.register_buffer(
            "shared_neurons", torch.zeros(s, dtype=torch.long)
        )  # neuron maps (provenance)
        self.register_buffer("expert_neurons", torch.zeros(E, m, dtype=torch.long))
        self.recorder: Recorder | None = None

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_ffn(
        cls,
        ffn: FFNWeights,
        shared: torch.Tensor,
        experts: torch.Tensor,
        num_experts_per_tok: int,
        router: nn.Module | None,
    ) -> MoEBlock:
        """Slice a dense FFN by a partition: ``shared`` (s,) and ``experts`` (E, m) neuron indices."""
        E, m = experts.shape
        block = cls(
            hidden_size=ffn.hidden_size,
            shared_size=shared.numel(),
            num_experts=E,
            expert_size=m,
            num_experts_per_tok=num_experts_per_tok,
            gated=ffn.gate is not None,
            activation=ffn.activation,
            up_bias=ffn.up_bias is not None,
            down_bias=ffn.down_bias is not None,
            router=router,
        ).to(ffn.up.dtype)
        with torch.no_grad():
            block.shared_up.copy_(ffn.up[shared])
            block.shared_down.copy_(ffn.down[:, shared])
            block.experts_up.copy_(ffn.up[experts])
            block.experts_down.copy_(ffn.down[:, experts].permute(1, 0, 2))
            if ffn.gate is not None:
                block.shared_gate.copy_(ffn.gate[shared])
                block.experts_gate.copy_(ffn.gate[experts])
            if ffn.up_bias is not None:
                block.shared_up_bias.copy_(ffn.up_bias[shared])
                block.experts_up_bias.copy_(ffn.up_bias[experts])
            if ffn.gate_bias is not None:
                block.shared_gate_bias.copy_(ffn.gate_bias[shared])
                block.experts_gate_bias.copy_(ffn.gate_bias[experts])
            if ffn.down_bias is not None:
                block.down_bias.copy_(ffn.down_bias)
            block.shared_neurons.copy_(shared)
            block.expert_neurons.copy_(experts)
        return block

    def spec(self) -> dict[str, Any]:
        """Constructor arguments (without the router) for rebuilding an empty block at load time."""
        return {
            "hidden_size": self.hidden_size,
            "shared_size": self.shared_size,
            "num_experts": self.num_experts,
            "expert_size": self.expert_size,
            "num_experts_per_tok": self.num_experts_per_tok,
            "gated": self.gated,
            "activation": self.activation,
            "up_bias": self.shared_up_bias is not None,
            "down_bias": self.down_bias is not None,
        }

    # --- compute ------------------------------------------------------------------------
    def _hidden(
        self, x: torch.Tensor, up: torch.Tensor, ub: Any, gate: Any, gb: Any
    ) -> torch.Tensor:
        u = nn.functional.linear(x, up, ub)
        if gate is None:
            return self.act(u)
        return self.act(nn.functional.linear(x, gate, gb)) * u

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """Always-on part, including the down bias: (T, d) → (T, d)."""
        if self.shared_size == 0:
            out = x.new_zeros(x.shape)
            return out if self.down_bias is None else out + self.down_bias
        h = self._hidden(
            x, self.shared_up, self.shared_up_bias, self.shared_gate, self.shared_gate_bias
        )
        return nn.functional.linear(h, self.shared_down, self.down_bias)

    def expert_hidden(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Activations of expert ``e``'s neurons: (T, d) → (T, m)."""
        gate = None if self.experts_gate is None else self.experts_gate[e]
        ub = None if self.experts_up_bias is None else self.experts_up_bias[e]
        gb = None if self.experts_gate_bias is None else self.experts_gate_bias[e]
        return self._hidden(x, self.experts_up[e], ub, gate, gb)

    def expert_output(self, x: torch.Tensor, e: int) -> torch.Tensor:
        return self.expert_hidden(x, e) @ self.experts_down[e].t()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores (T, E) in fp32."""
        return self.router(x).float()  # type: ignore[misc]

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Top-k expert indices (T, k); the selection bias moves choices, never weights."""
        k = self.num_experts_per_tok
        return torch.topk(scores + self.selection_bias, k, dim=-1).indices

    def routed_output(self, x: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Sum of the selected experts' outputs: (T, d), (T, k) → (T, d).

        Few tokens (decoding: T·k ≤ E): gather the k selected experts' weights per token and use
        batched products. Many tokens (prefill): group tokens by expert and run each group
        through its expert's slices (fewer, larger products than per-token gathers). When autograd
        records (recovery), the (token, slot) pairs are sorted by expert and gathered, split and
        scattered back once: per-expert indexing would add one autograd node per expert whose
        backward zero-fills a full-size buffer (a recovery step on SmolLM2 at S56A8E128: 7.2 → 5.9
        s). Without autograd the per-expert loop is kept: it allocates no (T·k, d) temporaries,
        and measured faster there (S24A8E128 block, 512 tokens: 16 vs 25 ms).
        """
        T, k = selected.shape
        if T * k <= self.num_experts:
            return self._routed_gathered(x, selected)
        slices = self._expert_slices()
        stacks = [w for w in self._expert_stacks() if w is not None]
        if not (torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in stacks))):
            out = torch.zeros_like(x)
            for e, idx in expert_groups(selected, self.num_experts):
                out.index_add_(0, idx, self.group_output(x[idx], e, slices))
            return out
        flat = selected.reshape(-1)
        tokens = torch.argsort(flat, stable=True) // k  # token of each (token, slot), by expert
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        outs = [
            self.group_output(xe, e, slices)
            for e, xe in enumerate(x.index_select(0, tokens).split(counts))
            if counts[e]
        ]
        return torch.zeros_like(x).index_add_(0, tokens, torch.cat(outs))

    def output_from_activations(self, h: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """The block's output from its neurons' activations: (T, n) in block order (shared, then
        experts), (T, k) → (T, d). Equals ``forward`` on the tokens ``h`` came from when
        ``selected`` is their routing; the carving loop uses it because it already holds every
        neuron's activation from the dense profiling pass."""
        s = self.shared_size
        if s:
            out = nn.functional.linear(h[:, :s], self.shared_down, self.down_bias)
        else:
            out = h.new_zeros(h.shape[0], self.hidden_size)
            if self.down_bias is not None:
                out = out + self.down_bias
        return out + self.routed_from_activations(h, selected)

    def routed_from_activations(self, h: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """The selected experts' summed output from block-order activations (T, n): (T, d). Only
        the selected experts' columns are read (grouped by expert, as in ``routed_output``)."""
        s, m = self.shared_size, self.expert_size
        out = h.new_zeros(h.shape[0], self.hidden_size)
        for e, idx in expert_groups(selected, self.num_experts):
            cols = slice(s + e * m, s + (e + 1) * m)
            out.index_add_(0, idx, h[idx, cols] @ self.experts_down[e].t())
        return out

    def expert_weights(self, experts: torch.Tensor) -> tuple[Any, ...]:
        """The (up, up bias, gate, gate bias, down) slices of ``experts`` (N,), stacked per entry."""

        def pick(w: torch.Tensor | None) -> torch.Tensor | None:
            return None if w is None else w[experts]

        return (
            self.experts_up[experts],
            pick(self.experts_up_bias),
            pick(self.experts_gate),
            pick(self.experts_gate_bias),
            self.experts_down[experts],
        )

    def _expert_stacks(self) -> tuple[Any, ...]:
        """The routed experts' (up, up bias, gate, gate bias, down) stacks, None where absent."""
        return (self.experts_up, self.experts_up_bias, self.experts_gate, self.experts_gate_bias, self.experts_down)

    def _expert_slices(self) -> list[tuple[Any, ...]]:
        """Per expert, views of its ``_expert_stacks()`` slices (``unbind``: one autograd node per
        weight stack rather than one per expert)."""
        stacks = [[None] * self.num_experts if w is None else w.unbind(0) for w in self._expert_stacks()]
        return list(zip(*stacks, strict=True))

    def group_output(self, x: torch.Tensor, e: int, slices: list[tuple[Any, ...]]) -> torch.Tensor:
        """Expert ``e``'s output on the tokens routed to it, from ``_expert_slices()``: (n, d) → (n, d)."""
        up, ub, gate, gb, down = slices[e]
        return self._hidden(x, up, ub, gate, gb) @ down.t()

    def _routed_gathered(self, x: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        T, k = selected.shape
        up, ub, gate, gb, down = self.expert_weights(selected.reshape(-1))  # (T·k, m, d) …
        xs = x.repeat_interleave(k, dim=0).unsqueeze(-1)  # (T·k, d, 1)
        u = torch.bmm(up, xs).squeeze(-1)  # (T·k, m)
        if ub is not None:
            u = u + ub
        if gate is None:
            h = self.act(u)
        else:
            g = torch.bmm(gate, xs).squeeze(-1)
            h = self.act(g if gb is None else g + gb) * u
        y = torch.bmm(down, h.unsqueeze(-1)).squeeze(-1)  # (T·k, d)
        return y.view(T, k, -1).sum(dim=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])  # (T, d)
        y = self.shared_output(x)
        if self.num_experts:
            scores = self.scores(x)
            selected = self.select(scores)
            y = y + self.routed_output(x, selected)
            if self.recorder is not None:
                self.recorder(self, x, scores, selected)
        return y.reshape(shape)

    # --- diagnostics (statistics only, never the compute path) --------------------------
    def all_expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every routed expert's output on every token: (T, d) → (T, E, d)."""
        return torch.stack([self.expert_output(x, e) for e in range(self.num_experts)], dim=1)

    def extra_repr(self) -> str:
        return (
            f"d={self.hidden_size}, shared={self.shared_size}, experts={self.num_experts}×{self.expert_size}, "
            f"k={self.num_experts_per_tok}, act={self.activation}"
        )


def expert_groups(selected: torch.Tensor, num_experts: int) -> list[tuple[int, torch.Tensor]]:
    """Tokens grouped by the expert they selected: [(e, token indices)] for every expert chosen
    at least once, from selections (T, k)."""
    k = selected.shape[1]
    flat = selected.reshape(-1)
    tokens = torch.argsort(flat, stable=True) // k  # token of each (token, slot), sorted by expert
    groups, start = [], 0
    for e, c in enumerate(torch.bincount(flat, minlength=num_experts).tolist()):
        if c:
            groups.append((e, tokens[start : start + c]))
            start += c
    return groups


@contextmanager
def recording(blocks: Mapping[int, MoEBlock], recorders: Mapping[int, Recorder]) -> Iterator[None]:
    """Attach ``recorders[i]`` to ``blocks[i]`` for the duration of the ``with`` body; the
    recorders attached before (usually none) are put back afterwards, also on error."""
    saved = {i: blocks[i].recorder for i in recorders}
    try:
        for i, recorder in recorders.items():
            blocks[i].recorder = recorder
        yield
    finally:
        for i, recorder in saved.items():
            blocks[i].recorder = recorder
