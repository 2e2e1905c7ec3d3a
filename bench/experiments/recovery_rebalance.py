"""Carve + recover once (no rebalance), eval; then refit selection biases, eval again.

The script behind bench/README.md's selection-bias refit table:
    PYTHONPATH=. python bench/experiments/recovery_rebalance.py 0.25 4
"""
import json
import sys
import time

import torch

from bench.harness import LoadCounter
from moecarve.architectures import arch_for
from moecarve.calibration import read_text, tokenize, windows
from moecarve.carving import carve_model
from moecarve.evaluate import EvalProtocol, eval_rows, perplexity
from moecarve.moe import recording
from moecarve.plan import plan
from moecarve.recipe import Recipe
from moecarve.recovery import _validation_loss, rebalance_selection, recover, teacher_targets
from moecarve.sources import load_config, load_model


def main() -> None:
    frac, nwin = float(sys.argv[1]), int(sys.argv[2])
    recipe = Recipe.parse({"model": "smollm2-135m", "moe": {"active_fraction": frac}, "recovery": True})
    config = load_config(recipe.model)
    the_plan = plan(recipe, config)
    model, tok = load_model(recipe.model, "float32")
    rows = windows(tokenize(tok, read_text(None, None, default="austen")), 2048, 8, True, 0)
    held_out = eval_rows(tok, EvalProtocol("austen-heldout", 2048, nwin))
    print("dense", perplexity(model, held_out)["perplexity"], flush=True)
    teacher = teacher_targets(model, rows, recipe.recovery)
    print("teacher", round(teacher.seconds, 1), flush=True)
    out = carve_model(model, arch_for(config), the_plan, recipe, rows)

    def score(tag: str) -> None:
        counters = {i: LoadCounter(b.num_experts) for i, b in out.blocks.items()}
        with recording(out.blocks, counters):
            ppl = perplexity(model, held_out)["perplexity"]
        cv = [c.cv() for c in counters.values()]
        print(tag, json.dumps({"ppl": round(ppl, 3), "cv_mean": round(sum(cv) / len(cv), 3), "cv_max": round(max(cv), 3)}), flush=True)

    score("carved")
    rep = recover(model, out.blocks, teacher, recipe.recovery, rebalance=False)
    print("recovered", rep.steps, round(rep.seconds, 1), rep.validation_loss_before, rep.validation_loss_after, flush=True)
    score("recovered")
    order = torch.randperm(len(teacher.chunks), generator=torch.Generator().manual_seed(0)).tolist()
    t = time.perf_counter()
    cvs = rebalance_selection(model, out.blocks, teacher.chunks[order[2:10]])  # recover's train chunks
    print("rebalance", round(time.perf_counter() - t, 1), cvs, "val", _validation_loss(model, teacher, order[:2]), flush=True)
    score("rebalanced")


if __name__ == "__main__":
    main()
