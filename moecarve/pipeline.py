"""``carve()``: plan → load → calibrate → evaluate dense → carve → evaluate → export."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moecarve import __version__
from moecarve.architectures import arch_for
from moecarve.calibration import read_text, tokenize, windows
from moecarve.card import model_card
from moecarve.carving import carve_model
from moecarve.checkpoint import prepare_output_dir, save_checkpoint
from moecarve.errors import CancelledError
from moecarve.evaluate import EvalProtocol, eval_rows, perplexity
from moecarve.moe import recording
from moecarve.plan import Plan, plan
from moecarve.progress import CancelFn, ProgressEvent, ProgressFn, never_cancel, no_progress
from moecarve.recipe import Recipe
from moecarve.recovery import recover, teacher_targets
from moecarve.report.tokens import DEFAULT_MAX_TOKENS, TOKEN_ROUTES, record_token_routes
from moecarve.routing_stats import RoutingRecorder
from moecarve.sources import load_config, load_model

log = logging.getLogger(__name__)


@dataclass
class CarveResult:
    output_dir: Path
    plan: Plan
    evaluation: dict[str, Any]
    routing_stats: dict[str, Any]
    carve_seconds: float
    model: Any
    exports: dict[str, Any] = field(default_factory=dict)  # format → export metadata (fidelity report)


def _eval_protocol(recipe: Recipe) -> EvalProtocol:
    ev = recipe.evaluation
    return EvalProtocol(
        name="recipe",
        window=ev.window or recipe.calibration.max_seq_length,
        max_windows=ev.max_windows,
        path=ev.path,
        text_column=ev.text_column,
    )


def carve(
    recipe: Recipe | dict[str, Any],
    output_dir: str | Path,
    *,
    progress: ProgressFn = no_progress,
    should_cancel: CancelFn = never_cancel,
    overwrite: bool = False,
) -> CarveResult:
    """Carve ``recipe.model`` into an MoE and write the reference checkpoint to ``output_dir``.

    Everything that can be checked cheaply (recipe, model config, text sources, output path) is
    checked before the model is loaded; nothing is written unless the carve completes.
    """
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.parse(recipe)
    out = Path(output_dir)
    config = load_config(recipe.model)
    the_plan = plan(recipe, config)
    prepare_output_dir(out, overwrite)
    cal = recipe.calibration
    cal_text = read_text(cal.path, cal.text_column, default=cal.corpus)
    protocol = _eval_protocol(recipe)
    if recipe.evaluation.enabled:
        read_text(
            protocol.path, protocol.text_column, default="heldout"
        )  # fail before the model loads

    progress(ProgressEvent("load", 0, 1, f"loading {recipe.model}"))
    model, tokenizer = load_model(recipe.model, "float32")
    progress(ProgressEvent("load", 1, 1, f"loaded {recipe.model}"))
    rows = windows(
        tokenize(tokenizer, cal_text),
        cal.max_seq_length,
        cal.num_calibration_samples,
        cal.shuffle,
        cal.seed,
    )
    progress(ProgressEvent("calibrate", 1, 1, f"{rows.shape[0]} windows × {rows.shape[1]} tokens"))

    evaluation: dict[str, Any] = {}
    eval_ids = None
    if recipe.evaluation.enabled:
        eval_ids = eval_rows(tokenizer, protocol)
        evaluation["dense"] = perplexity(model, eval_ids, progress, "evaluate-dense")

    # recovery's teacher: the dense model's distribution on the calibration text, taken before
    # the in-place carve replaces its FFNs
    teacher = teacher_targets(model, rows, recipe.recovery, progress) if recipe.recovery.enabled else None
    arch = arch_for(config)
    start = time.perf_counter()
    outcome = carve_model(model, arch, the_plan, recipe, rows, progress, should_cancel)
    the_plan = outcome.plan or the_plan  # layer-adaptive budgets decide layouts during the carve
    carve_seconds = time.perf_counter() - start
    if teacher is not None:
        report = recover(
            model, outcome.blocks, teacher, recipe.recovery, seed=recipe.seed, rebalance=recipe.router.balance,
            progress=progress, should_cancel=should_cancel,
        )
        evaluation["recovery"] = report.to_dict()
    if should_cancel():
        raise CancelledError("cancelled after carving, before export")

    heldout_stats: dict[str, Any] = {}
    if eval_ids is not None:
        recorders = {i: RoutingRecorder(b.num_experts, outcome.dense_down.get(i)) for i, b in outcome.blocks.items()}
        with recording(outcome.blocks, recorders):
            evaluation["carved"] = perplexity(model, eval_ids, progress, "evaluate")
        heldout_stats = {str(i): r.summary() for i, r in recorders.items()}
        evaluation["ratio"] = evaluation["carved"]["perplexity"] / evaluation["dense"]["perplexity"]
    evaluation["carve_seconds"] = carve_seconds
    # Per-token routes of a short sample for the dashboard's token view: the end of the first
    # held-out (else calibration) window, past any title page, with its in-window context.
    sample, source = (rows[0], "calibration") if eval_ids is None else (eval_ids[0], "held-out")
    token_routes = record_token_routes(
        model, tokenizer, sample, blocks=outcome.blocks, source=source, keep_last=DEFAULT_MAX_TOKENS
    )

    routing_stats = {
        "layout": the_plan.layout,
        "calibration": {str(i): s for i, s in outcome.calibration_stats.items()},
        "heldout": heldout_stats,
        "layer_seconds": {str(i): round(s, 3) for i, s in outcome.layer_seconds.items()},
    }
    progress(ProgressEvent("export", 0, 1, f"writing {out}"))
    side = {
        "recipe.yaml": recipe.to_yaml(),
        "plan.json": the_plan.model_dump(),
        "routing_stats.json": routing_stats,
        "neuron_stats.json": {str(i): s for i, s in outcome.neuron_stats.items()},
        "evaluation.json": evaluation,
        TOKEN_ROUTES: json.dumps(token_routes, separators=(",", ":"))
        + "\n",  # compact: a list per token
        "moecarve.json": {
            "moecarve_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": _transformers_version(),
            "python": platform.python_version(),
            "base_model": recipe.model,
            "seed": recipe.seed,
            "carve_seconds": carve_seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "README.md": model_card(recipe, the_plan, evaluation, recipe.model, carve_seconds),
    }
    save_checkpoint(model, tokenizer, outcome.blocks, out, side, recipe.dtype, overwrite)
    progress(ProgressEvent("export", 1, 1, "done"))
    exports = _native_exports(recipe, out, protocol, progress, should_cancel)
    return CarveResult(out, the_plan, evaluation, routing_stats, carve_seconds, model, exports)


def _native_exports(
    recipe: Recipe, out: Path, protocol: EvalProtocol, progress: ProgressFn, should_cancel: CancelFn
) -> dict[str, Any]:
    """Native formats the recipe asks for, each in OUT_DIR/exports/<format>/ (plan checked them)."""
    from moecarve.export import export

    done = {}
    for fmt in recipe.export.formats:
        if should_cancel():
            raise CancelledError(f"cancelled before the {fmt} export (the reference checkpoint is complete)")
        spec = recipe.export
        result = export(
            out, fmt, out / "exports" / fmt, score_scale=spec.score_scale, tau=spec.tau, protocol=protocol, progress=progress
        )
        done[fmt] = result.metadata
    return done


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
