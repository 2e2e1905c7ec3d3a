"""Plan-time check of a recipe's export request (pure: config and layer plans only, no weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moecarve.errors import UnsupportedExportError
from moecarve.export import targets
from moecarve.export.base import LayerShape
from moecarve.recipe import Recipe

# What each built-in router method builds: (router kind, whether its scores carry a bias). Native
# classes hold only 'linear' routers, and qwen2_moe only bias-free ones. Methods not listed here are
# checked when the export runs, from the checkpoint's routers.
ROUTER_METHODS: dict[str, tuple[str, bool]] = {
    "centroid": ("linear", False),
    "fitted": ("linear", True),
    "representative": ("representative", False),
}


def check_exports(recipe: Recipe, config: dict[str, Any], layers: Sequence[LayerShape]) -> None:
    """Raise ``UnsupportedExportError`` if a requested format cannot hold this carve exactly.

    Load balancing fits a selection bias wherever a layer selects fewer than all its experts, and
    some router methods fit a bias of their own, so formats without one refuse them here rather
    than after the carve.
    """
    routed = any(not lp.dense and lp.num_experts_per_tok < lp.num_experts for lp in layers)
    kind, router_bias = ROUTER_METHODS.get(recipe.router.method, ("linear", False))
    for name in recipe.export.formats:
        target = targets.get(name)
        if target.native and kind != "linear":
            raise UnsupportedExportError(
                f"{name}: router method {recipe.router.method!r} builds {kind!r} routers, but native classes score "
                "experts with one linear map of the hidden state, so only 'linear' routers export; use router.method "
                "'fitted' or 'centroid', or keep the reference format"
            )
        target.check(config, layers, selection_bias=routed and (recipe.router.balance or router_bias))
