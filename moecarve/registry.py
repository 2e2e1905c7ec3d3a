"""One registry pattern for every extension point (partition methods, routers, export targets).

Entries are registered explicitly by name. Built-ins may be registered *lazily* as
``"module:attribute"`` strings so that listing names (recipe validation in the API process)
never imports torch; the object is imported on first ``get``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object table with duplicate rejection and helpful misses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Any:
        """Register ``obj`` (or a lazy ``"module:attr"`` path) under ``name``.

        Used bare it is a decorator: ``@registry.register("name")``.
        """
        if obj is None:

            def decorator(target: T) -> T:
                self._add(name, target)
                return target

            return decorator
        self._add(name, obj)
        return obj

    def _add(self, name: str, obj: T | str) -> None:
        current = self._entries.get(name)
        if current is not None:
            # A lazy path resolving to the object that is now registering itself is not a duplicate.
            if isinstance(current, str) and not isinstance(obj, str) and _path_of(obj) == current:
                self._entries[name] = obj
                return
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def check(self, name: str) -> str:
        """Validator helper: return ``name`` or raise ValueError listing the known names."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return name


def _path_of(obj: Callable[..., Any] | Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__name__', '')}"
