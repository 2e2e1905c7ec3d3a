"""Plan-time check of a recipe's export request (pure: config and layer plans only, no weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moecarve.export import targets
from moecarve.export.base import LayerShape
from moecarve.recipe import Recipe


def check_exports(recipe: Recipe, config: dict[str, Any], layers: Sequence[LayerShape]) -> None:
    """Raise ``UnsupportedExportError`` if a requested format cannot hold this carve exactly.

    Load balancing fits a selection bias wherever a layer selects fewer than all its experts, so
    formats without one refuse ``router.balance`` here rather than after the carve.
    """
    balanced = recipe.router.balance and any(not lp.dense and lp.num_experts_per_tok < lp.num_experts for lp in layers)
    for name in recipe.export.formats:
        targets.get(name).check(config, layers, selection_bias=balanced)
