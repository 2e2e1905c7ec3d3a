"""Per-layer router temperature τ for the unit-weight recipe, from the scale of the router scores.

Two errors pull τ in opposite directions (docs/export.md, measured): the renormalised top-k weights
deviate from 1/k by about τ·(s_i − mean s), so τ must be small against the spread of the scores s;
but the native classes compare ``sigmoid(τ s)`` (or ``softmax(τ s)``) in fp32, whose resolution is
about 2.4e-7 (6e-8) in τs, so experts whose scores differ by less than ~2.4e-7/τ tie and may swap.
Both depend on the scale of s, which varies by orders of magnitude between router methods and
layers (SmolLM2's centroid routers: std ≈ 0.03–0.12). So τ is set per layer so that the flattened
scores τ·s have a fixed standard deviation ``score_scale``, measured on a calibration window.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from moecarve.calibration import read_text, tokenize, windows
from moecarve.errors import CalibrationError
from moecarve.export.base import exact_tau
from moecarve.moe import MoEBlock, recording

log = logging.getLogger(__name__)

SCALE_TOKENS = 512  # one window of calibration text is plenty for a standard deviation per layer


def calibration_window(checkpoint_dir: Path, tokenizer: Any, max_positions: int | None) -> torch.Tensor:
    """One window of the carve's calibration text (the embedded corpus if it cannot be read here)."""
    path, column, corpus = None, "text", "calibration"
    if (checkpoint_dir / "recipe.yaml").is_file():
        from moecarve.recipe import Recipe

        cal = Recipe.from_yaml(checkpoint_dir / "recipe.yaml").calibration
        path, column, corpus = cal.path, cal.text_column, cal.corpus
    try:
        text = read_text(path, column, default=corpus)
    except CalibrationError as e:
        log.warning("calibration text unreadable here (%s); measuring router scales on the embedded corpus", e)
        text = read_text(None, "text", default="calibration")
    length = min(SCALE_TOKENS, max_positions or SCALE_TOKENS)
    return windows(tokenize(tokenizer, text), length, 1, shuffle=False)


@torch.no_grad()
def router_score_std(model: torch.nn.Module, blocks: dict[int, MoEBlock], rows: torch.Tensor) -> dict[int, float]:
    """Standard deviation of each MoE layer's router scores (T × E entries) on ``rows``."""
    stds: dict[int, float] = {}

    def recorder(i: int) -> Any:
        def record(block: MoEBlock, x: torch.Tensor, scores: torch.Tensor, selected: torch.Tensor) -> None:
            stds[i] = float(scores.float().std())

        return record

    with recording(blocks, {i: recorder(i) for i in blocks}):
        model(input_ids=rows, use_cache=False)
    return stds


def layer_taus(stds: dict[int, float], score_scale: float) -> dict[int, float]:
    """τ per layer: a power of two with τ·std(s) ≈ ``score_scale`` (τ = 1 for a constant router)."""
    return {i: exact_tau(score_scale / s) if s > 0 else 1.0 for i, s in stds.items()}
