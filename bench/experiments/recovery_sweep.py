"""Carve once, then try recovery configs from the same carved weights; eval on N held-out windows.

The script behind bench/README.md's learning-rate table (run as it stands):
    PYTHONPATH=. python bench/experiments/recovery_sweep.py 0.25 4 \
        '[{"budget_seconds": 210, "learning_rate": 0.001}, {"budget_seconds": 210, "learning_rate": 0.001, "parameters": "experts"}]'
The teacher pass is charged as 60 s to every config (so each gets the same training time); it keeps
the widest ``top_k_logits`` any config asks for and each config reads its own first K. It was
run before the post-recovery selection-bias refit existed (``recover`` defaults to rebalance=False).
A config leaves unnamed fields at RecoverySpec's defaults (since this session: ``norms: true``,
``top_k_logits: 512``; name ``"norms": false, "top_k_logits": 64`` for the earlier ones).
"""
import json
import sys
import time

import torch

from moecarve.architectures import arch_for
from moecarve.calibration import read_text, tokenize, windows
from moecarve.carving import carve_model
from moecarve.evaluate import EvalProtocol, eval_rows, perplexity
from moecarve.plan import plan
from moecarve.recipe import Recipe, RecoverySpec
from moecarve.recovery import (
    TeacherTargets,
    norm_weights,
    recover,
    teacher_targets,
    trainable_parameters,
)
from moecarve.sources import load_config, load_model


def main() -> None:
    frac, nwin, configs = float(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    recipe = Recipe.parse({"model": "smollm2-135m", "moe": {"active_fraction": frac}})
    config = load_config(recipe.model)
    the_plan = plan(recipe, config)
    model, tok = load_model(recipe.model, "float32")
    rows = windows(tokenize(tok, read_text(None, None, default="austen")), 2048, 8, True, 0)
    held_out = eval_rows(tok, EvalProtocol("austen-heldout", 2048, nwin))
    t = time.perf_counter()
    top_k = max(RecoverySpec(enabled=True, **c).top_k_logits for c in configs)
    teacher = teacher_targets(model, rows, RecoverySpec(enabled=True, top_k_logits=top_k))
    print("teacher", round(time.perf_counter() - t, 1), flush=True)
    t = time.perf_counter()
    out = carve_model(model, arch_for(config), the_plan, recipe, rows)
    print("carve", round(time.perf_counter() - t, 1), the_plan.layout, flush=True)
    params = trainable_parameters(out.blocks, "experts") + norm_weights(model)  # all a config may train
    saved = [q.detach().clone() for q in params]
    base = perplexity(model, held_out)["perplexity"]
    print("carved ppl", round(base, 3), flush=True)
    for c in configs:
        with torch.no_grad():
            for q, s in zip(params, saved, strict=True):
                q.copy_(s)
        spec = RecoverySpec(enabled=True, **c)
        k = spec.top_k_logits  # topk is sorted: the first k of the widest teacher are its top k
        view = TeacherTargets(teacher.chunks, teacher.top_index[..., :k], teacher.top_logp[..., :k], 60.0)
        t = time.perf_counter()
        rep = recover(model, out.blocks, view, spec)
        dt = time.perf_counter() - t
        ppl = perplexity(model, held_out)["perplexity"]
        print(json.dumps({
            "cfg": c, "ppl": round(ppl, 3), "base": round(base, 3), "steps": rep.steps, "sec": round(dt, 1),
            "val": [rep.validation_loss_before, rep.validation_loss_after, rep.best_step],
            "hist": [(h["step"], h["train_loss"], h.get("validation_loss")) for h in rep.history],
        }), flush=True)


if __name__ == "__main__":
    main()
