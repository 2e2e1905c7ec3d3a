"""Token → expert routes: run a carved model on a short text and record each token's experts.

The dashboard's token view and cross-layer transitions read ``token_routes.json``::

    {"source": str, "tokens": [str, ...], "ids": [int, ...],
     "layers": {"<layer>": [[expert, ...] per token]}}   # experts in router order, best first

This module imports torch (it runs the model); the renderer never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moecarve.moe import MoEBlock, recording

TOKEN_ROUTES = "token_routes.json"
DEFAULT_MAX_TOKENS = 320


def moe_blocks(model: nn.Module) -> dict[int, MoEBlock]:
    """The MoE blocks of a carved model by decoder-layer index (dense layers are absent)."""
    from moecarve.architectures import arch_for
    from moecarve.carving import decoder_layers

    layers = decoder_layers(model, arch_for(model.config.to_dict()))
    blocks = {}
    for i, layer in enumerate(layers):
        found = [m for m in layer.modules() if isinstance(m, MoEBlock)]
        if found:
            blocks[i] = found[0]
    return blocks


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's own text (byte-level pieces of a multi-byte character may show as '�')."""
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]


@torch.no_grad()
def record_token_routes(
    model: nn.Module,
    tokenizer: Any,
    ids: torch.Tensor,
    *,
    blocks: dict[int, MoEBlock] | None = None,
    source: str = "text",
    keep_last: int | None = None,
) -> dict[str, Any]:
    """Run ``model`` on ``ids`` (T,) in one window and record the routed experts of every token.

    With ``keep_last`` only the last tokens are kept (the earlier ones still serve as context).
    Any recorder already attached to a block is restored afterwards.
    """
    blocks = moe_blocks(model) if blocks is None else blocks
    routes: dict[int, list[list[int]]] = {}

    def recorder_for(i: int):  # noqa: ANN202 - a MoEBlock recorder
        def record(
            block: MoEBlock, x: torch.Tensor, scores: torch.Tensor, selected: torch.Tensor
        ) -> None:
            routes[i] = selected.tolist()  # (T, k), topk order: best first

        return record

    with recording(blocks, {i: recorder_for(i) for i in blocks}):
        model(input_ids=ids.reshape(1, -1), use_cache=False)
    start = 0 if keep_last is None else max(0, ids.numel() - keep_last)
    id_list = [int(t) for t in ids.reshape(-1)[start:]]
    return {
        "source": source,
        "tokens": token_strings(tokenizer, id_list),
        "ids": id_list,
        "layers": {str(i): routes[i][start:] for i in sorted(routes)},
    }


def routes_for_text(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    source: str = "text",
) -> dict[str, Any]:
    """Token routes of the first ``max_tokens`` tokens of ``text`` (no special tokens added)."""
    from moecarve.calibration import tokenize
    from moecarve.errors import CalibrationError

    ids = tokenize(tokenizer, text)[:max_tokens]
    if ids.numel() == 0:
        raise CalibrationError("the text for token routes is empty")
    return record_token_routes(model, tokenizer, ids, source=source)


def write_token_routes(checkpoint_dir: str | Path, routes: dict[str, Any]) -> Path:
    path = Path(checkpoint_dir) / TOKEN_ROUTES
    path.write_text(json.dumps(routes, separators=(",", ":")) + "\n")
    return path
