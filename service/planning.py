"""Check a submitted recipe before it is queued: sources confined, then planned from the config.

Runs in the API process, so it reads ``config.json`` only (``moecarve.plan`` never imports torch).
Every refusal becomes a 422 whose ``loc`` names the recipe field at fault.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

from moecarve.errors import ModelSourceError, RecipeError, UnsupportedArchitectureError
from moecarve.plan import plan
from moecarve.recipe import Recipe
from moecarve.sources import load_config
from service.policy import SourceNotAllowed, confine_recipe
from service.schemas import plan_summary
from service.settings import Settings


def recipe_field(error: RecipeError) -> str:
    """The recipe field a planning error is about.

    ``plan()`` names the field at the start of its messages ("overrides: ...", "calibration: ...",
    "layer 3: layout ... does not fit" for the layout); a ``field`` attribute wins if the library
    ever sets one.
    """
    explicit = getattr(error, "field", None)
    if isinstance(explicit, str):
        return explicit
    head = str(error).split(":", 1)[0].split(" ", 1)[0].split(".", 1)[0]
    if head in Recipe.model_fields:
        return head
    return "moe" if head == "layer" else ""


def invalid(field: str, error: Exception, error_type: str) -> RequestValidationError:
    loc = ("body", "recipe", *[p for p in field.split(".") if p])
    return RequestValidationError(
        [{"type": error_type, "loc": loc, "msg": str(error), "input": None}]
    )


def plan_job(recipe: Recipe, settings: Settings) -> tuple[Recipe, dict[str, Any]]:
    """The checked recipe (resolved source paths) and its plan summary.

    Raises:
        RequestValidationError: a source is not allowed, the model cannot be read, or the
            recipe does not fit the model.
    """
    try:
        checked = confine_recipe(recipe, settings)
        the_plan = plan(checked, load_config(checked.model))
    except SourceNotAllowed as e:
        raise invalid(e.field, e, e.type) from e
    except (ModelSourceError, UnsupportedArchitectureError) as e:
        raise invalid("model", e, e.type) from e
    except RecipeError as e:
        raise invalid(recipe_field(e), e, e.type) from e
    return checked, plan_summary(the_plan)
