import json

import pytest

from moecarve.errors import ModelSourceError, RecipeError, UnsupportedArchitectureError
from moecarve.plan import plan
from moecarve.recipe import Recipe
from moecarve.sources import load_config

pytestmark = pytest.mark.unit

SMOL = load_config("smollm2-135m")


def test_plan_reports_sizes_from_config_alone():
    p = plan(Recipe.parse({"moe": "S2A2E16"}), SMOL)
    assert p.layout == "S2A2E16"
    assert p.active_ffn_fraction == pytest.approx(0.25)
    lp = p.layers[0]
    assert (lp.expert_size, lp.shared_size, lp.num_experts, lp.active_neurons) == (96, 192, 14, 384)
    assert p.ffn_params == 30 * 1536 * 3 * 576
    assert p.active_ffn_params == p.ffn_params // 4
    assert p.router_params == 30 * 14 * 576
    assert p.active_params < p.total_params
    assert p.flops_per_token == 2 * p.active_params


def test_dense_override_counts_full_ffn():
    p = plan(
        Recipe.parse({"moe": "S2A2E16", "overrides": [{"layers": [0, 29], "dense": True}]}), SMOL
    )
    assert p.layers[0].dense and p.layers[29].dense and not p.layers[1].dense
    assert p.active_ffn_fraction == pytest.approx((2 + 28 * 0.25) / 30)


def test_indivisible_layout_says_which_values_fit():
    with pytest.raises(RecipeError, match=r"divide d_ff=1536.*\[.*16.*\]"):
        plan(Recipe.parse({"moe": "S2A2E17"}), SMOL)


def test_unsupported_architecture_lists_supported():
    with pytest.raises(
        UnsupportedArchitectureError, match="supported: bert, gemma3_text, gpt2, llama"
    ):
        plan(Recipe.parse({"moe": "S1A1E4"}), {"model_type": "mamba", "hidden_size": 8})


def test_override_layer_out_of_range_and_window_too_long():
    with pytest.raises(RecipeError, match=r"layers \[30\] do not exist"):
        plan(Recipe.parse({"moe": "S2A2E16", "overrides": [{"layers": [30], "dense": True}]}), SMOL)
    with pytest.raises(RecipeError, match="max_position_embeddings"):
        plan(Recipe.parse({"moe": "S2A2E16", "calibration": {"max_seq_length": 10000}}), SMOL)


def test_missing_model_paths_are_clear(tmp_path):
    with pytest.raises(ModelSourceError, match="not a directory"):
        plan(Recipe.parse({"model": str(tmp_path / "nope"), "moe": "S1A1E4"}))
    with pytest.raises(ModelSourceError, match="no config.json"):
        plan(Recipe.parse({"model": str(tmp_path), "moe": "S1A1E4"}))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="cannot read"):
        plan(Recipe.parse({"model": str(tmp_path), "moe": "S1A1E4"}))


def test_gpt2_default_inner_size(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "gpt2", "n_embd": 16, "n_layer": 2, "n_head": 2, "vocab_size": 50}
        )
    )
    p = plan(Recipe.parse({"model": str(tmp_path), "moe": "S1A1E4"}))
    assert p.intermediate_size == 64 and not p.gated
