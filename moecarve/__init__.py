"""moecarve: carve dense causal LMs into shared + routed Mixture-of-Experts models.

The top-level names are imported lazily so that ``import moecarve.recipe`` (the service's API
process, planning) never imports torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "carve": "moecarve.pipeline",
    "CarveResult": "moecarve.pipeline",
    "plan": "moecarve.plan",
    "Plan": "moecarve.plan",
    "Recipe": "moecarve.recipe",
    "load_pretrained": "moecarve.checkpoint",
    "MoEBlock": "moecarve.moe",
    "perplexity": "moecarve.evaluate",
    "MoecarveError": "moecarve.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moecarve' has no attribute {name!r}")
