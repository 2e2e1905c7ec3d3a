"""Bad input gives a clear typed error and writes nothing."""

import json

import pytest
from conftest import tiny_recipe

import moecarve
from moecarve.errors import (
    CalibrationError,
    ModelSourceError,
    RecipeError,
    UnsupportedArchitectureError,
)

pytestmark = pytest.mark.integration


def carve_fails(recipe, out, error, match):
    with pytest.raises(error, match=match):
        moecarve.carve(recipe, out)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_model_path(tmp_path, calib_file):
    carve_fails(
        tiny_recipe(tmp_path / "no-model", calib_file),
        tmp_path / "out",
        ModelSourceError,
        "not a directory",
    )


def test_unsupported_architecture(tmp_path, calib_file):
    model = tmp_path / "t5"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    carve_fails(
        tiny_recipe(model, calib_file),
        tmp_path / "out",
        UnsupportedArchitectureError,
        "supported: bert",
    )


def test_missing_empty_and_binary_calibration(tmp_path, llama_dir):
    carve_fails(
        tiny_recipe(llama_dir, tmp_path / "nope.txt"),
        tmp_path / "out",
        CalibrationError,
        "does not exist",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    carve_fails(tiny_recipe(llama_dir, empty), tmp_path / "out", CalibrationError, "is empty")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    carve_fails(tiny_recipe(llama_dir, binary), tmp_path / "out", CalibrationError, "not UTF-8")
    emptydir = tmp_path / "emptydir"
    emptydir.mkdir()
    carve_fails(tiny_recipe(llama_dir, emptydir), tmp_path / "out", CalibrationError, "holds no")


def test_jsonl_without_text_column(tmp_path, llama_dir):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"content": "hello"}\n')
    carve_fails(tiny_recipe(llama_dir, bad), tmp_path / "out", CalibrationError, "'text' field")


def test_malformed_and_infeasible_recipes(tmp_path, llama_dir, calib_file):
    carve_fails(
        {**tiny_recipe(llama_dir, calib_file), "moe": {"num_experts": 2, "num_experts_per_tok": 3}},
        tmp_path / "out",
        RecipeError,
        "cannot exceed",
    )
    carve_fails(
        tiny_recipe(llama_dir, calib_file, num_experts=5, num_experts_per_tok=1),
        tmp_path / "out",
        RecipeError,
        "must divide d_ff=64",
    )


def test_existing_output_is_not_clobbered(tmp_path, llama_dir, calib_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(moecarve.MoecarveError, match="not empty"):
        moecarve.carve(tiny_recipe(llama_dir, calib_file), out)
    assert (out / "keep.txt").read_text() == "mine"
