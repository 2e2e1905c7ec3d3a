"""Layer-local probe: carve single FFN layers from captured inputs and score held-out reconstruction.

Much cheaper than perplexity (no model forward per configuration): for each captured layer,
profile the calibration inputs, build the block exactly as ``carving.build_block`` does, optionally
refit, and report on held-out inputs the relative FFN output error ‖ŷ − y‖² / ‖y‖², the same error
with oracle routing (each token's k experts of largest true gain: what a perfect router would reach
on this partition) and the expert-load CV. Used to choose layouts and methods; perplexity confirms the choices.
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
    h = ffn.hidden(cal, ffn.act_fn())
    y = h @ ffn.down.t()  # the dense output without the down bias
    bias = 0 if ffn.down_bias is None else ffn.down_bias
    for rows in zip(cal.split(2048), h.split(2048), (y + bias).split(2048), strict=True):
        stats.update(*rows)
    lp = _layer_plan(recipe, index, ffn.num_neurons)
    # as the carve does when it keeps every activation: the router is fitted on all calibration tokens (by default)
    block = build_block(ffn, stats.finalize(), lp, recipe, index, (cal, h, y) if recipe.router.fit_tokens == "calibration" else None)
    del h, y
    if recipe.correction.refit_down:
        refit_down(block, ffn, list(cal.split(2048)), recipe.correction.ridge)
    seconds = time.perf_counter() - start
    y = ffn.output(held)
    err = float(((block(held) - y) ** 2).sum() / (y**2).sum())
    sel = block.select(block.scores(held))
    # oracle routing of the same block: each token's k experts with the largest true gain
    shared = block.shared_output(held)
    outs = block.all_expert_outputs(held)  # (T, E, d)
    r = (y - shared).unsqueeze(1)
    gain = 2 * (r * outs).sum(-1) - outs.square().sum(-1)
    best = torch.topk(gain, block.num_experts_per_tok, dim=1).indices
    oracle = shared + outs.gather(1, best[..., None].expand(-1, -1, outs.shape[-1])).sum(1)
    oracle_err = float(((oracle - y) ** 2).sum() / (y**2).sum())
    return {"err": err, "oracle_err": oracle_err, "cv": load_cv(sel, block.num_experts), "seconds": seconds}


def capture_ffn_inputs(model: Any, layers: list[int], rows: torch.Tensor) -> dict[int, list[torch.Tensor]]:
    """Dense FFN inputs of ``layers`` for each row of ``rows``: {layer: [(L, d) per row]}."""
    caps: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    mlps = [model.model.layers[i].mlp for i in layers]
    hooks = [
        mlp.register_forward_pre_hook(lambda _m, a, i=i: caps[i].append(a[0].reshape(-1, a[0].shape[-1]).clone()))
        for i, mlp in zip(layers, mlps, strict=True)
    ]
    try:
        for row in rows:
            model(input_ids=row[None])
    finally:
        for h in hooks:
            h.remove()
    return caps


@torch.no_grad()
def main() -> None:
    import argparse
    import json

    import numpy as np

    from moecarve.architectures import arch_for
    from moecarve.calibration import read_text, tokenize, windows
    from moecarve.ffn import extract_ffn
    from moecarve.sources import load_config, load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 12, 20, 27])
    ap.add_argument("--calibration-windows", type=int, default=4)
    ap.add_argument("--configs", nargs="+", required=True,
                    help='recipe fragments as JSON, e.g. \'{"moe": "S24A8E128"}\' or \'{"moe": {"active_fraction": 0.5}}\'')
    args = ap.parse_args()
    model, tok = load_model("smollm2-135m", "float32")
    arch = arch_for(load_config("smollm2-135m"))
    act = arch.activation(model.config.to_dict())
    cal = windows(tokenize(tok, read_text(None, None, default="austen")), 2048, args.calibration_windows, True, 0)
    held = windows(tokenize(tok, read_text(None, None, default="heldout")), 2048, 1)
    caps = capture_ffn_inputs(model, args.layers, torch.cat([cal, held]))
    for fragment in args.configs:
        recipe = Recipe.parse({"model": "smollm2-135m", **json.loads(fragment)})
        rows = []
        for i in args.layers:
            ffn = extract_ffn(model.model.layers[i], arch, act)
            rows.append(probe_layer(ffn, torch.cat(caps[i][:-1]), caps[i][-1], recipe, i))
        errs = [r["err"] for r in rows]
        print(f"{fragment:70s} err {' '.join(f'{e:.4f}' for e in errs)}  mean {np.mean(errs):.4f}  "
              f"oracle routing {np.mean([r['oracle_err'] for r in rows]):.4f}  "
              f"cv {np.mean([r['cv'] for r in rows]):.2f}", flush=True)


if __name__ == "__main__":
    main()
