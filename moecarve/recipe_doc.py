"""The recipe's fields as a Markdown table, generated from the pydantic model (the only place
help text lives), so the README cannot drift from the code: a test compares them."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from moecarve.recipe import Recipe


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " or ".join(repr(a) for a in get_args(annotation))
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("moecarve.recipe.", "").replace(" | ", " or ")


def _rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = field.annotation
        nested = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if field.default_factory is not None:
            default = "(see below)" if nested else repr(field.default_factory())
        else:
            default = "required" if field.default is PydanticUndefined else repr(field.default)
        rows.append((path, _type_name(ann), default, field.description or ""))
        if nested is not None:
            rows.extend(_rows(nested, f"{path}."))
    return rows


def fields_markdown() -> str:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for path, type_, default, desc in _rows(Recipe):
        desc = desc.replace("|", "\\|")
        lines.append(
            f"| `{path}` | `{type_}` | `{default}` | {desc} |".replace("`(see below)`", "—")
        )
    return "\n".join(lines)
