"""``moecarve inspect``: a summary of a carved checkpoint from its side files (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moecarve.errors import CheckpointError


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{path.parent} is not a moecarve checkpoint: missing {path.name}"
        ) from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e.msg}") from e


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    plan = _read(path / "plan.json")
    stats = _read(path / "routing_stats.json")
    evaluation = _read(path / "evaluation.json")
    layers = stats.get("heldout") or stats["calibration"]
    per_layer = {
        i: {
            k: s[k]
            for k in (
                "load_cv",
                "load_max_over_mean",
                "router_entropy",
                "reconstruction_error",
                "recall",
            )
        }
        for i, s in layers.items()
    }
    lines = [
        f"{path}: {plan['layout']} from {plan['model']} ({plan['model_type']}, {plan['num_layers']} layers)",
        f"active FFN {plan['active_ffn_fraction']:.1%}; active params ≈ {plan['active_params'] / 1e6:.1f}M of {plan['total_params'] / 1e6:.1f}M",
    ]
    if "carved" in evaluation:
        lines.append(
            f"held-out perplexity: dense {evaluation['dense']['perplexity']:.2f}, carved {evaluation['carved']['perplexity']:.2f}"
        )
    lines.append("layer  load_cv  max/mean  router_H  recon_err  recall")
    for i, s in per_layer.items():
        lines.append(
            f"{int(i):5d}  {s['load_cv']:7.3f}  {s['load_max_over_mean']:8.2f}  {s['router_entropy']:8.3f}  "
            f"{s['reconstruction_error']:9.4f}  {s['recall']:6.3f}"
        )
    return {
        "path": str(path),
        "plan": plan,
        "evaluation": evaluation,
        "layers": per_layer,
        "text": "\n".join(lines),
    }
