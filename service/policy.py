"""Which model and text sources a request may use on this server.

A recipe names server-side paths, so the API confines them: local model directories and
calibration / evaluation files must resolve (symlinks followed) under a configured allowed root;
the packaged default model and the embedded corpora are always allowed; hub ids only when the
server is configured online. The checked recipe carries the resolved real paths, so the worker
reads exactly what was checked. ``trust_remote_code`` is not a recipe field (``extra="forbid"``)
and the library always passes ``trust_remote_code=False``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from moecarve.calibration import SUPPORTED_SUFFIXES
from moecarve.errors import MoecarveError
from moecarve.recipe import Recipe
from moecarve.sources import PACKAGED
from service.settings import Settings

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class SourceNotAllowed(MoecarveError):
    """A model or text source is outside what this server allows."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _roots(settings: Settings) -> list[Path]:
    return [Path(os.path.realpath(r)) for r in settings.allowed_roots]


def _confine(raw: str, field: str, settings: Settings) -> Path:
    """The real path of ``raw`` if it lies under an allowed root."""
    if "\x00" in raw:
        raise SourceNotAllowed(field, f"{field}: path contains a NUL byte")
    if not os.path.isabs(raw):
        raise SourceNotAllowed(
            field,
            f"{field}: {raw!r} is not an absolute path; give a server path under {_root_list(settings)}",
        )
    real = Path(os.path.realpath(raw))
    if not any(real.is_relative_to(root) for root in _roots(settings)):
        raise SourceNotAllowed(
            field, f"{field}: {raw!r} is outside the allowed roots {_root_list(settings)}"
        )
    return real


def _root_list(settings: Settings) -> list[str]:
    return [str(r) for r in settings.allowed_roots] or ["(none configured: MOECARVE_ALLOWED_ROOTS)"]


def _check_tree(path: Path, field: str, settings: Settings, suffixes: set[str] | None) -> None:
    """Files inside a directory may be symlinks too: each one must resolve under a root."""
    if not path.is_dir():
        return
    for entry in path.rglob("*"):
        if suffixes is not None and entry.suffix.lower() not in suffixes:
            continue
        if entry.is_symlink() or entry.is_file():
            _confine(str(entry), field, settings)


def check_model(model: str, settings: Settings) -> str:
    if model in PACKAGED:
        return model
    if not _HUB_ID.match(model) or os.path.lexists(model):
        real = _confine(model, "model", settings)  # a local directory (relative paths are refused)
        _check_tree(real, "model", settings, suffixes=None)
        return str(real)
    if not settings.allow_hub:
        raise SourceNotAllowed(
            "model",
            f"model: hub ids are disabled on this server; use the packaged model {sorted(PACKAGED)} "
            f"or a directory under {_root_list(settings)}",
        )
    return model


def check_text(
    path: str | list[str] | None, field: str, settings: Settings
) -> str | list[str] | None:
    if path is None:
        return None
    paths = [path] if isinstance(path, str) else path
    real = []
    for p in paths:
        resolved = _confine(p, field, settings)
        _check_tree(resolved, field, settings, suffixes=SUPPORTED_SUFFIXES)
        real.append(str(resolved))
    return real[0] if isinstance(path, str) else real


def confine_recipe(recipe: Recipe, settings: Settings) -> Recipe:
    """``recipe`` with every source checked and replaced by its resolved real path.

    Raises:
        SourceNotAllowed: a source is outside what this server allows (``.field`` names it).
    """
    cal = recipe.calibration.model_copy(
        update={"path": check_text(recipe.calibration.path, "calibration.path", settings)}
    )
    ev = recipe.evaluation.model_copy(
        update={"path": check_text(recipe.evaluation.path, "evaluation.path", settings)}
    )
    return recipe.model_copy(
        update={"model": check_model(recipe.model, settings), "calibration": cal, "evaluation": ev}
    )
