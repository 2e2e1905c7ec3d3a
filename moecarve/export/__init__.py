"""Export carved checkpoints: the reference format or native transformers MoE classes.

``targets`` is the export-target registry (name → ``ExportTarget``). Built-ins are registered
lazily and their modules import no torch, so recipe validation and ``plan`` can check an export
request in the API process. ``export(checkpoint_dir, format, out_dir)`` does the work (torch).

Add a target: a module defining an ``ExportTarget`` instance, registered here by name.
"""

from __future__ import annotations

from typing import Any

from moecarve.registry import Registry

targets: Registry = Registry("export format")
targets.register("glm4_moe", "moecarve.export.glm4_moe:TARGET")
targets.register("qwen2_moe", "moecarve.export.qwen2_moe:TARGET")
targets.register("reference", "moecarve.export.reference:TARGET")


def export(*args: Any, **kwargs: Any) -> Any:
    """See ``moecarve.export.run.export`` (imported on call: it needs torch)."""
    from moecarve.export.run import export as _export

    return _export(*args, **kwargs)


__all__ = ["export", "targets"]
