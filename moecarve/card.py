"""Model card (README.md with front matter) for a carved checkpoint."""

from __future__ import annotations

from typing import Any

from moecarve.plan import Plan
from moecarve.recipe import Recipe


def _ppl(evaluation: dict[str, Any], key: str) -> str:
    value = evaluation.get(key, {}).get("perplexity")
    return f"{value:.2f}" if value is not None else "not measured"


def recovery_summary(rec: dict[str, Any]) -> str:
    """One line for a recovery report (``evaluation["recovery"]``): model card and CLI."""
    return (
        f"{rec['steps']} steps on {rec['tokens']} calibration tokens, {rec['seconds']:.0f} s incl. the "
        f"{rec['teacher_seconds']:.0f} s teacher pass; validation KD {rec['validation_loss_before']:.3f} → "
        f"{rec['validation_loss_after']:.3f} (kept step {rec['best_step']})"
    )


def model_card(
    recipe: Recipe,
    the_plan: Plan,
    evaluation: dict[str, Any],
    base_model: str,
    carve_seconds: float,
) -> str:
    rec = evaluation.get("recovery")
    how = "training-free" if rec is None else "then briefly distilled from the dense model (recovery)"
    recovery_row = "" if rec is None else f"| recovery | {recovery_summary(rec)} |\n"
    return f"""---
base_model: {base_model}
library_name: transformers
tags:
- moecarve
- mixture-of-experts
- {the_plan.model_type}
---

# {the_plan.layout} MoE carved from `{base_model}`

Carved by moecarve, {how}: each FFN's neurons were split into a shared (always-on)
expert and routed experts; a router picks the top-{recipe.moe.resolved(the_plan.intermediate_size).num_experts_per_tok}
routed experts per token, each contributing with weight 1.

| | |
|---|---|
| layout | {the_plan.layout} |
| active FFN fraction | {the_plan.active_ffn_fraction:.1%} |
| active parameters (estimate) | {the_plan.active_params / 1e6:.1f}M of {the_plan.total_params / 1e6:.1f}M |
| partition / router | `{recipe.partition.method}` / `{recipe.router.method}` (balance: {recipe.router.balance}) |
| calibration | {recipe.calibration.num_calibration_samples} × {recipe.calibration.max_seq_length} tokens |
| held-out perplexity, dense | {_ppl(evaluation, "dense")} |
| held-out perplexity, carved | {_ppl(evaluation, "carved")} |
| carve time | {carve_seconds:.1f} s |
{recovery_row}
## Load

```python
import moecarve
from transformers import AutoTokenizer
model = moecarve.load_pretrained("THIS_DIR")
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")
```

Files: `recipe.yaml` (resolved recipe), `plan.json`, `routing_stats.json` (per layer: expert load,
load CV, router entropy, reconstruction error, recall), `evaluation.json`, `moecarve.json` (provenance).
"""
