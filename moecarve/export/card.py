"""Model card (README.md with front matter) of a native export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moecarve.export.base import ExportTarget


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "not measured"


def _recipe_methods(src: Path) -> str:
    try:
        import yaml

        recipe = yaml.safe_load((src / "recipe.yaml").read_text()) or {}
    except (OSError, ValueError):
        return "see recipe.yaml"
    part = (recipe.get("partition") or {}).get("method", "coact")
    router = recipe.get("router") or {}
    return f"partition `{part}`, router `{router.get('method', 'centroid')}` (balance: {router.get('balance', False)})"


def _temperature(conv: dict[str, Any]) -> str:
    taus = list((conv.get("tau") or {}).values())
    if not taus:
        return "not applicable"
    span = f"τ = {taus[0]:.3g}" if min(taus) == max(taus) else f"τ ∈ [{min(taus):.3g}, {max(taus):.3g}] per layer"
    scale = (conv.get("temperature") or {}).get("score_scale")
    how = f", chosen so that std(τ·s) ≈ {scale:g}" if scale else ""
    return f"router × {span}{how} (DESIGN.md §4), the 1/k weights folded back"


def export_card(src: Path, target: ExportTarget, meta: dict[str, Any]) -> str:
    plan = _json(src / "plan.json")
    provenance = _json(src / "moecarve.json")
    base = provenance.get("base_model") or plan.get("model") or "unknown"
    conv = meta.get("conversion", {})
    layout = conv.get("layout", {})
    fid = meta.get("fidelity") or {}
    active = plan.get("active_ffn_fraction")
    return f"""---
base_model: {base}
library_name: transformers
tags:
- moecarve
- mixture-of-experts
- {target.name}
---

# {plan.get("layout", "MoE")} carved from `{base}`, as `{target.class_name}`

Carved by moecarve without training: each FFN was split into a shared (always-on) expert and routed
experts, a router picks the top-{layout.get("num_experts_per_tok", "k")} routed experts per token, and every selected
expert contributes with weight 1. This directory holds it in a native transformers MoE class, so stock
`from_pretrained` loads it (no `trust_remote_code`).

| | |
|---|---|
| base model | `{base}` ({plan.get("model_type", "?")}) |
| method | {_recipe_methods(src)} |
| layout | {plan.get("layout", "?")}: {layout.get("num_experts", "?")} routed experts of {layout.get("expert_size", "?")} neurons, top-{layout.get("num_experts_per_tok", "?")}, shared {layout.get("shared_size", "?")} neurons, dense layers {layout.get("dense_layers", [])} |
| active FFN fraction | {_num(active, ".1%")} |
| unit-weight recipe | {_temperature(conv)} |
| max / mean abs logit diff vs reference | {_num(fid.get("max_abs_logit_diff"), ".3g")} / {_num(fid.get("mean_abs_logit_diff"), ".3g")} |
| selected experts differ | {_num(fid.get("selection_diff_fraction"), ".3%")} of routing decisions, {_num(fid.get("tokens_with_selection_diff"), ".2%")} of tokens |
| held-out perplexity, reference → export | {_num(fid.get("perplexity_reference"), ".3f")} → {_num(fid.get("perplexity_export"), ".3f")} ({fid.get("windows", 0)} × {fid.get("window", 0)} tokens) |
| load time, stock transformers (fp32, CPU) | {_num(meta.get("load_seconds"), ".1f")} s |

## Load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_DIR")  # {target.class_name}
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")
```

The exact carved model (reference format) is `{meta.get("source_checkpoint", "?")}`, loaded with
`moecarve.load_pretrained`. Files: `export.json` (conversion and the fidelity report above),
`recipe.yaml`, `plan.json`, `routing_stats.json`, `neuron_stats.json` (neuron → expert maps),
`evaluation.json`, `moecarve.json` (provenance) — copied from the reference checkpoint.
"""
