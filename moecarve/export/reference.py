"""``reference``: the moecarve reference format (every architecture, exact), copied as is.

Useful to publish a carve without the ``exports/`` folder a recipe may have added, or to move it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moecarve.export.base import ExportRequest, ExportTarget, LayerShape

SKIP = {"exports"}  # native exports written inside a carve's output directory


class ReferenceTarget(ExportTarget):
    name = "reference"
    class_name = "moecarve.load_pretrained"
    native = False

    def check(self, config: dict[str, Any], layers: Sequence[LayerShape], *, selection_bias: bool = False) -> None:
        return None  # holds every architecture and layout exactly

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        copied = []
        for src in sorted(request.checkpoint_dir.iterdir()):
            if src.name in SKIP or src.name.startswith("."):
                continue
            if src.is_dir():
                shutil.copytree(src, out / src.name)
            else:
                shutil.copy2(src, out / src.name)
            copied.append(src.name)
        return {"class": self.class_name, "copied": copied}


TARGET = ReferenceTarget()
