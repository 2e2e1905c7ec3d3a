"""Budget-first layouts: an active FFN fraction alone → S·k·E.

The rule, from layer-probe and perplexity measurements on SmolLM2-135M (bench/README.md):
- granularity: about ``TARGET_UNITS`` = 128 units per layer (the divisor of d_ff nearest to it,
  keeping at least ``MIN_EXPERT_SIZE`` neurons per expert). 64 and 192 units measured within
  ±2 % of 128 in held-out FFN error once the down projections are refit; coarser (16) is worse.
- split of the active units: ``ROUTED_SHARE`` = 1/4 routed (top-k), 3/4 shared, and at most
  ``ROUTED_CAP`` = 1/16 of all units routed. With a real router, always-on neurons lose nothing
  to routing mistakes; measured held-out FFN error at 25 % active: 1/4 routed 0.224 < 1/2 routed
  0.234 < 3/4 routed 0.252. At 50 % and 75 % the error kept falling as the routed part shrank
  to 1/16 of the units and was flat below it (bench/README.md, "routed share").
The constants are ratios of d_ff, not SmolLM2 sizes, so the rule carries to any FFN width.
"""

from __future__ import annotations

TARGET_UNITS = 128
MIN_EXPERT_SIZE = 4
ROUTED_SHARE = 0.25
ROUTED_CAP = 1 / 16


def units_for(d_ff: int | None, target: int | None = None) -> int:
    """The number of equal units (shared + routed experts) a layer of width ``d_ff`` is cut into:
    the divisor of d_ff nearest ``target`` (default ``TARGET_UNITS``)."""
    target = target or TARGET_UNITS
    if d_ff is None:
        return target
    candidates = [u for u in range(2, d_ff // MIN_EXPERT_SIZE + 1) if d_ff % u == 0]
    if not candidates:
        raise ValueError(f"d_ff={d_ff} is too small to split into experts of ≥ {MIN_EXPERT_SIZE} neurons")
    return min(candidates, key=lambda u: (abs(u - target), -u))


def layout_for_fraction(fraction: float | None, d_ff: int | None = None, units: int | None = None) -> dict[str, int]:
    if fraction is None:
        raise ValueError("active_fraction is required for a budget-first layout")
    units = units_for(d_ff, units)
    return layout_for_units(max(2, min(units, round(fraction * units))), units)


def layout_for_units(active: int, units: int) -> dict[str, int]:
    """Split ``active`` of a layer's ``units`` into shared and routed (top-k) units."""
    k = max(1, round(min(active * ROUTED_SHARE, units * ROUTED_CAP)))
    shared = active - k
    return {"num_shared_experts": shared, "num_experts_per_tok": k, "num_experts": units - shared}
