import json

import pytest
import yaml
from conftest import tiny_recipe

from moecarve.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def recipe_file(tmp_path, llama_dir, calib_file):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(llama_dir, calib_file)))
    return path


def test_plan_carve_inspect_eval(recipe_file, tmp_path, calib_file, capsys):
    assert main(["plan", str(recipe_file), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["layout"] == "S2A2E8" and plan["active_ffn_fraction"] == pytest.approx(0.5)

    out = tmp_path / "ckpt"
    assert main(["carve", str(recipe_file), str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"checkpoint: {out.resolve()}" in text and "held-out perplexity: dense" in text

    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["layers"]) == {"0", "1"} and info["plan"]["layout"] == "S2A2E8"

    assert (
        main(
            [
                "eval",
                str(out),
                "--text",
                str(calib_file),
                "--window",
                "64",
                "--windows",
                "2",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    carved = json.loads((out / "evaluation.json").read_text())["carved"]
    assert result["tokens"] == carved["tokens"] == 126
    assert result["perplexity"] == pytest.approx(carved["perplexity"], rel=1e-5)


def test_errors_are_one_line_with_nonzero_exit(tmp_path, recipe_file, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("moe: {num_experts: 2, num_experts_per_tok: 3}\n")
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moecarve: error: RecipeError:") and "\n" not in err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "CheckpointError" in capsys.readouterr().err
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["carve", str(recipe_file), str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
