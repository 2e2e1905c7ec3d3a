"""Load a model once, carve it many times in memory, score held-out perplexity and expert load.

The benchmark (``bench/quality.py``) and quick experiments share this: one model load, one
tokenisation, the dense perplexity cached on disk, and a lightweight load recorder (counts only;
the full ``RoutingRecorder`` recomputes every expert and would double the evaluation cost).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moecarve.architectures import arch_for
from moecarve.calibration import read_text, tokenize, windows
from moecarve.carving import carve_model
from moecarve.evaluate import perplexity
from moecarve.moe import recording
from moecarve.plan import plan
from moecarve.recipe import Recipe
from moecarve.recovery import recover, teacher_targets
from moecarve.sources import load_config, load_model

CACHE = Path.home() / ".cache" / "moecarve" / "bench"


class LoadCounter:
    """Per-layer expert load on the tokens a block sees (selection counts only)."""

    def __init__(self, num_experts: int) -> None:
        self.load = torch.zeros(num_experts, dtype=torch.float64)

    def __call__(self, block: Any, x: torch.Tensor, scores: torch.Tensor, selected: torch.Tensor) -> None:
        self.load += torch.bincount(selected.reshape(-1), minlength=self.load.numel()).double()

    def cv(self) -> float:
        return float(self.load.std(unbiased=False) / self.load.mean().clamp_min(1e-12))


@dataclass
class Bench:
    model_name: str = "smollm2-135m"
    cal_windows: int = 8
    window: int = 2048
    eval_sets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model, self.tokenizer = load_model(self.model_name, "float32")
        self.config = load_config(self.model_name)
        self.pristine = copy.deepcopy(self.model)
        ids = tokenize(self.tokenizer, read_text(None, default="austen"))  # the Austen protocol
        self.cal_rows = windows(ids, self.window, self.cal_windows, shuffle=True, seed=0)

    def add_eval(self, name: str, text: str, max_windows: int) -> torch.Tensor:
        rows = windows(tokenize(self.tokenizer, text), self.window, max_windows, shuffle=False)
        self.eval_sets[name] = rows
        return rows

    def dense(self, name: str) -> dict[str, Any]:
        """Dense perplexity on eval set ``name``, cached on disk by the rows' content."""
        rows = self.eval_sets[name]
        key = hashlib.sha256(rows.numpy().tobytes() + self.model_name.encode()).hexdigest()[:16]
        path = CACHE / f"dense-{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        self._restore()
        result = perplexity(self.model, rows)
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        return result

    def _restore(self) -> None:
        """A fresh dense copy (carving replaces FFNs in place)."""
        self.model = copy.deepcopy(self.pristine)

    def carve(self, recipe: Recipe | dict[str, Any], evals: list[str], eval_windows: int | None = None) -> dict[str, Any]:
        """Carve a fresh copy, then score each eval set; returns perplexities, times, load CV."""
        recipe = recipe if isinstance(recipe, Recipe) else Recipe.parse(recipe)
        self._restore()
        the_plan = plan(recipe, self.config)
        # as the pipeline does: the teacher is the dense model, scored before the in-place carve
        teacher = teacher_targets(self.model, self.cal_rows, recipe.recovery) if recipe.recovery.enabled else None
        start = time.perf_counter()
        outcome = carve_model(self.model, arch_for(self.config), the_plan, recipe, self.cal_rows)
        carve_s = time.perf_counter() - start
        the_plan = outcome.plan or the_plan
        result: dict[str, Any] = {"layout": the_plan.layout, "carve_seconds": round(carve_s, 1),
                                  "active_units": [lp.num_shared_experts + lp.num_experts_per_tok for lp in the_plan.layers],
                                  "layer_seconds": [round(s, 2) for s in outcome.layer_seconds.values()]}
        if teacher is not None:
            report = recover(self.model, outcome.blocks, teacher, recipe.recovery, seed=recipe.seed, rebalance=recipe.router.balance)
            result["recovery"] = report.to_dict()  # its seconds include the teacher pass
        for name in evals:
            counters = {i: LoadCounter(b.num_experts) for i, b in outcome.blocks.items()}
            rows = self.eval_sets[name] if eval_windows is None else self.eval_sets[name][:eval_windows]
            start = time.perf_counter()
            with recording(outcome.blocks, counters):
                ppl = perplexity(self.model, rows)["perplexity"]
            cvs = [c.cv() for c in counters.values()]
            result[name] = {
                "perplexity": ppl,
                "load_cv": sum(cvs) / len(cvs),
                "load_cv_max": max(cvs),
                "eval_seconds": round(time.perf_counter() - start, 1),
            }
        err = [s.get("reconstruction_error", 0.0) for s in outcome.calibration_stats.values()]
        result["calib_recon_error_mean"] = sum(err) / max(len(err), 1)
        return result
