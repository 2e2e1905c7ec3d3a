"""Budget-first layouts: an active FFN fraction alone → S·k·E.

Finer experts route better (PRIOR_ART.md's oracle table: S8A8E64 beats S2A2E16 at 25 %), so the
rule takes the finest granularity (≤ 64 units per layer) that divides d_ff, and splits the active
units evenly between the shared expert and the routed top-k.
"""

from __future__ import annotations

GRANULARITIES = (64, 32, 16, 8, 4)


def layout_for_fraction(fraction: float | None, d_ff: int | None = None) -> dict[str, int]:
    if fraction is None:
        raise ValueError("active_fraction is required for a budget-first layout")
    units = next((u for u in GRANULARITIES if d_ff is None or d_ff % u == 0), None)
    if units is None:
        raise ValueError(
            f"d_ff={d_ff} is not divisible by any of {GRANULARITIES}; give an explicit layout"
        )
    active = max(2, min(units, round(fraction * units)))
    shared = active // 2
    k = active - shared
    return {"num_shared_experts": shared, "num_experts_per_tok": k, "num_experts": units - shared}
