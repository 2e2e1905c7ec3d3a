"""Layer-local probe: carve single FFN layers from captured inputs and score held-out reconstruction.

Much cheaper than perplexity (no model forward per configuration): for each captured layer,
profile the calibration inputs, build the block exactly as ``carving.build_block`` does, optionally
refit, and report on held-out inputs the relative FFN output error ‖ŷ − y‖² / ‖y‖² and the
expert-load CV. Used to choose layouts and methods; perplexity confirms the choices.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from moecarve.carving import build_block
from moecarve.corrections import refit_down
from moecarve.ffn import FFNWeights
from moecarve.plan import _layer_plan
from moecarve.profiling import NeuronStats
from moecarve.recipe import Recipe
from routers.balance import load_cv


@torch.no_grad()
def probe_layer(ffn: FFNWeights, cal: torch.Tensor, held: torch.Tensor, recipe: Recipe, index: int) -> dict[str, Any]:
    start = time.perf_counter()
    stats = NeuronStats(ffn, recipe.profile.marker_top_k, recipe.profile.sample_tokens, recipe.seed + index)
    for chunk in cal.split(2048):
        stats.update(chunk)
    lp = _layer_plan(recipe, index, ffn.num_neurons)
    block = build_block(ffn, stats.finalize(), lp, recipe, index)
    if recipe.correction.refit_down:
        refit_down(block, ffn, list(cal.split(2048)), recipe.correction.ridge)
    seconds = time.perf_counter() - start
    y = ffn.output(held)
    err = float(((block(held) - y) ** 2).sum() / (y**2).sum())
    sel = block.select(block.scores(held))
    return {"err": err, "cv": load_cv(sel, block.num_experts), "seconds": seconds}
