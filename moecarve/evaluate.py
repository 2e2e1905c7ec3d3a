"""Held-out perplexity: non-overlapping windows, each scored on its own (DESIGN.md §5).

The Austen protocol preset: the embedded held-out text (Persuasion + Northanger Abbey), the first
40 windows of 2048 tokens, no BOS added, 2,047 predicted tokens per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from moecarve.calibration import read_text, tokenize, windows
from moecarve.progress import ProgressEvent, ProgressFn, no_progress


@dataclass(frozen=True)
class EvalProtocol:
    name: str
    window: int
    max_windows: int
    path: str | list[str] | None = None  # None: embedded held-out text
    text_column: str = "text"


AUSTEN = EvalProtocol(name="austen", window=2048, max_windows=40)
PRESETS = {"austen": AUSTEN}


@torch.no_grad()
def perplexity(
    model: nn.Module,
    rows: torch.Tensor,
    progress: ProgressFn = no_progress,
    stage: str = "evaluate",
) -> dict[str, Any]:
    """Perplexity of ``model`` on ``rows`` (N, L), each row scored on its own."""
    nll, count = 0.0, 0
    for i, row in enumerate(rows):
        progress(ProgressEvent(stage, i, len(rows), f"window {i + 1}/{len(rows)}"))
        logits = model(input_ids=row.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        nll += float(nn.functional.cross_entropy(logits, row[1:], reduction="sum"))
        count += row.numel() - 1
    progress(ProgressEvent(stage, len(rows), len(rows), "done"))
    return {
        "perplexity": math.exp(nll / count),
        "nll": nll / count,
        "tokens": count,
        "windows": len(rows),
    }


def eval_rows(tokenizer: Any, protocol: EvalProtocol) -> torch.Tensor:
    text = read_text(protocol.path, protocol.text_column, default="heldout")
    return windows(tokenize(tokenizer, text), protocol.window, protocol.max_windows, shuffle=False)
