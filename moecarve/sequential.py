"""Run a causal LM one decoder layer at a time (the hook plumbing; no math here).

``capture_layer_calls`` records, for every calibration window, the hidden states entering layer 0
and the extra arguments each layer is called with (rotary embeddings, masks: per layer, since e.g.
Gemma 3 alternates sliding and global attention). Layers are stubbed to identities while
recording, and the run stops before the last layer, so capturing costs only the embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Call = tuple[tuple[Any, ...], dict[str, Any]]


class _Stop(Exception):
    pass


@dataclass
class LayerCalls:
    hidden: list[torch.Tensor]  # per window: (1, L, d) input of the next layer to run
    calls: list[list[Call]] = field(
        default_factory=list
    )  # [layer][window] → (args, kwargs) besides hidden


def _split_hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, Call]:
    kwargs = dict(kwargs)
    if args:
        return args[0], (tuple(args[1:]), kwargs)
    return kwargs.pop("hidden_states"), ((), kwargs)


@torch.no_grad()
def capture_layer_calls(
    model: nn.Module, layers: nn.ModuleList, windows: torch.Tensor
) -> LayerCalls:
    """Record layer inputs for each row of ``windows`` (N, L)."""
    n_layers = len(layers)
    result = LayerCalls(hidden=[], calls=[[] for _ in range(n_layers)])

    def stub(i: int) -> Callable[..., torch.Tensor]:
        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            hidden, call = _split_hidden(args, kwargs)
            if i == 0:
                result.hidden.append(hidden.detach().clone())
            result.calls[i].append(call)
            if i == n_layers - 1:
                raise _Stop
            return hidden

        return forward

    try:
        for i, layer in enumerate(layers):
            layer.forward = stub(i)
        for row in windows:
            with suppress(_Stop):
                model(input_ids=row.unsqueeze(0), use_cache=False)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)  # back to the class's forward
    return result


def run_layer(layer: nn.Module, hidden: torch.Tensor, call: Call) -> torch.Tensor:
    args, kwargs = call
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


@contextmanager
def ffn_taps(
    entry: nn.Module,
    down: nn.Module,
    sink: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None],
) -> Iterator[None]:
    """Call ``sink(x, h, y)`` per FFN call: ``x`` enters ``entry`` (the FFN's first module),
    ``h`` (neuron activations) enters the down projection, ``y`` leaves it."""
    pending: list[torch.Tensor] = []

    def on_entry(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pending.append(_first(args, kwargs))

    def on_down(
        _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor
    ) -> None:
        sink(pending.pop(), _first(args, kwargs), out)

    handles = [
        entry.register_forward_pre_hook(on_entry, with_kwargs=True),
        down.register_forward_hook(on_down, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
