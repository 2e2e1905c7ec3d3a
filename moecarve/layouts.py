"""Budget-first layouts: an active FFN fraction alone → S·k·E.

The rule, from layer-probe and perplexity measurements on SmolLM2-135M (bench/README.md):
- granularity: about ``TARGET_UNITS`` = 384 units per layer (the divisor of d_ff nearest to it,
  keeping at least ``MIN_EXPERT_SIZE`` neurons per expert). End to end (router fitted on every
  calibration token, loss-sensitivity budgets) finer units were better at every fraction: held-out
  perplexity with 128 / 256 / 384 units 61.74 / 57.76 / 56.23 at 25 %, 41.00 / 40.05 / 39.31 at
  50 %, 32.72 / – / 32.22 at 75 %, for 20–35 % more carve time. (Older layer probes, router on a
  4096-token sample, had found 64–192 units within ±2 %; likely reason: more, smaller experts
  need more routing data.)
- split of the active units: ``ROUTED_SHARE`` = 1/4 routed (top-k), 3/4 shared, and at most
  ``ROUTED_CAP`` = 1/16 of all units routed. With a real router, always-on neurons lose nothing
  to routing mistakes; measured held-out FFN error at 25 % active: 1/4 routed 0.224 < 1/2 routed
  0.234 < 3/4 routed 0.252. At 50 % and 75 % the error kept falling as the routed part shrank
  to 1/16 of the units and was flat below it (bench/README.md, "routed share").
- with recovery (``recovery.enabled``, no ``units`` given): ``RECOVERY_UNITS`` = 256. Finer units
  make each training step dearer (k = 24 instead of 16 (token, expert) pairs per token); at 50 %
  with 384 units only 18 steps fit the 300 s and the validation loss never went below the
  carve's (carve kept: 39.31), with 256 units 24 steps gave 40.05 → 37.50.
The constants are ratios of d_ff, not SmolLM2 sizes, so the rule carries to any FFN width.
"""

from __future__ import annotations

TARGET_UNITS = 384
RECOVERY_UNITS = 256
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
