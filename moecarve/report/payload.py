"""Assemble the dashboard payload (summary, per-layer statistics, histograms, token routes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moecarve.report.data import finite, rate_histograms, read_side_files, transitions

LAYER_KEYS = (
    "tokens", "expert_load", "load_cv", "load_max_over_mean", "load_entropy", "router_entropy",
    "never_selected", "reconstruction_error", "recall", "shared_output_share", "coselection",
)  # fmt: skip


def _ppl(evaluation: dict[str, Any], key: str) -> float | None:
    return (evaluation.get(key) or {}).get("perplexity")


def summary(files: dict[str, Any]) -> dict[str, Any]:
    """The header facts: base model, layout, methods, budgets, perplexity, carve time."""
    plan = files["plan.json"]
    evaluation = files["evaluation.json"] or {}
    meta = files["moecarve.json"] or {}
    carve_seconds = evaluation.get("carve_seconds", meta.get("carve_seconds"))
    carved = evaluation.get("carved") or {}
    return {
        "base_model": meta.get("base_model", plan["model"]),
        "model_type": plan["model_type"],
        "layout": plan["layout"],
        "num_layers": plan["num_layers"],
        "moe_layers": sum(not lp["dense"] for lp in plan["layers"]),
        "intermediate_size": plan["intermediate_size"],
        "active_ffn_fraction": plan["active_ffn_fraction"],
        "active_params": plan["active_params"],
        "total_params": plan["total_params"],
        "ppl_dense": _ppl(evaluation, "dense"),
        "ppl_carved": _ppl(evaluation, "carved"),
        "ppl_ratio": evaluation.get("ratio"),
        "eval_tokens": carved.get("tokens"),
        "carve_seconds": carve_seconds,
        "created": meta.get("created"),
        "moecarve_version": meta.get("moecarve_version"),
    }


def _layer_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return {layer: {k: s.get(k) for k in LAYER_KEYS} for layer, s in stats.items()}


def build_payload(
    checkpoint_dir: str | Path, token_routes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything the page draws, from the checkpoint's side files (no model load).

    ``token_routes`` replaces the checkpoint's ``token_routes.json`` (routes of user-supplied text).
    """
    files = read_side_files(checkpoint_dir)
    plan, routing = files["plan.json"], files["routing_stats.json"]
    layers = [
        {
            "layer": lp["layer"],
            "dense": lp["dense"],
            "num_experts": lp["num_experts"],
            "num_experts_per_tok": lp["num_experts_per_tok"],
            "shared_size": lp["shared_size"],
            "expert_size": lp["expert_size"],
        }
        for lp in plan["layers"]
    ]
    sources = {
        name: _layer_stats(routing[name])
        for name in ("heldout", "calibration")
        if routing.get(name)
    }
    num_experts = {str(lp["layer"]): lp["num_experts"] for lp in layers}
    tokens = token_routes if token_routes is not None else files["token_routes.json"]
    payload = {
        "summary": summary(files),
        "recipe_yaml": files["recipe.yaml"],
        "layers": layers,
        "sources": sources,
        "layer_seconds": routing.get("layer_seconds", {}),
        "histograms": rate_histograms(files["neuron_stats.json"] or {}),
        "tokens": tokens,
        "transitions": transitions(tokens, num_experts),
    }
    return finite(payload)
