"""The README is the front door: keep what it says about the code true."""

from pathlib import Path

import pytest

from moecarve.recipe import Recipe
from moecarve.recipe_doc import fields_markdown

pytestmark = pytest.mark.unit
ROOT = Path(__file__).parent.parent


def test_readme_recipe_table_matches_the_schema():
    assert fields_markdown() in (ROOT / "README.md").read_text()


def test_readme_commands_match_makefile_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "recipes/smollm2-s2a2e16.yaml" in makefile


def test_shipped_recipes_parse():
    for path in (ROOT / "recipes").glob("*.yaml"):
        Recipe.from_yaml(path)
