"""The dashboard's data: a checkpoint's side files → one compact JSON-able payload.

Pure Python (no torch, no numpy): the service's API process renders dashboards with it.
Heavy per-neuron and per-token arrays are reduced here (histograms, transition counts) so the
page carries kilobytes, not the raw statistics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moecarve.errors import CheckpointError

REQUIRED = ("plan.json", "routing_stats.json")
HIST_BINS = 40


def _read_json(path: Path, required: bool) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        if required:
            raise CheckpointError(
                f"{path.parent} has no {path.name}: not a finished moecarve checkpoint (run `moecarve carve` first)"
            ) from e
        return None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e.msg} (line {e.lineno})") from e


def read_side_files(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The JSON/YAML side files of a checkpoint; optional ones are None when absent."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    names = (
        "plan.json",
        "routing_stats.json",
        "evaluation.json",
        "neuron_stats.json",
        "token_routes.json",
        "moecarve.json",
    )
    files = {name: _read_json(root / name, name in REQUIRED) for name in names}
    recipe = root / "recipe.yaml"
    files["recipe.yaml"] = recipe.read_text() if recipe.is_file() else None
    return files


def rate_histograms(neuron_stats: dict[str, Any], bins: int = HIST_BINS) -> dict[str, Any]:
    """Per layer, counts of neurons by log10(activation rate), shared and routed apart.

    Bins are shared by all layers (so layers compare); neurons that were never a marker (rate 0)
    are counted apart. The shared cut is the lowest rate among the shared expert's neurons.
    """
    positive = [r for s in neuron_stats.values() for r in s["rate"] if r > 0]
    if not positive:
        return {"edges": [], "layers": {}}
    lo, hi = math.log10(min(positive)), math.log10(max(positive))
    hi = hi if hi > lo else lo + 1.0
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins + 1)]
    layers = {}
    for key, s in neuron_stats.items():
        shared = set(s.get("shared", []))
        counts = {"shared": [0] * bins, "routed": [0] * bins}
        zero = {"shared": 0, "routed": 0}
        for i, r in enumerate(s["rate"]):
            part = "shared" if i in shared else "routed"
            if r <= 0:
                zero[part] += 1
                continue
            counts[part][min(int((math.log10(r) - lo) / width), bins - 1)] += 1
        shared_rates = [s["rate"][i] for i in shared]
        layers[key] = {
            **counts,
            "zero": zero,
            "cut": min(shared_rates) if shared_rates else None,
            "marker_top_k": s.get("marker_top_k"),
            "tokens": s.get("tokens"),
        }
    return {"edges": edges, "layers": layers}


def transitions(token_routes: dict[str, Any] | None, num_experts: dict[str, int]) -> dict[str, Any]:
    """Share of tokens going from expert i at one MoE layer to expert j at the next one.

    Every (selected at ℓ, selected at ℓ') pair of a token counts 1/(k·k'), so a matrix sums to 1
    and its row sums are the layer's expert load on this text. ``num_experts`` maps layer → E.
    """
    if not token_routes or not token_routes.get("layers"):
        return {}
    layers = sorted(token_routes["layers"], key=int)
    out = {}
    for a, b in zip(layers, layers[1:], strict=False):
        ra, rb = token_routes["layers"][a], token_routes["layers"][b]
        ea = max(num_experts.get(a, 0), 1 + max((e for sel in ra for e in sel), default=0))
        eb = max(num_experts.get(b, 0), 1 + max((e for sel in rb for e in sel), default=0))
        share = [[0.0] * eb for _ in range(ea)]
        for sa, sb in zip(ra, rb, strict=True):
            w = 1.0 / (len(sa) * len(sb) * len(ra))
            for i in sa:
                for j in sb:
                    share[i][j] += w
        out[a] = {
            "from": int(a),
            "to": int(b),
            "share": [[round(v, 6) for v in row] for row in share],
        }
    return out


def finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (JSON.parse rejects them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
