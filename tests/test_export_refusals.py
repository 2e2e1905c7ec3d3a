"""Export requests that no native class can hold exactly are refused from the config alone, saying why."""

import json

import pytest
import torch
from tiny import CONFIGS
from transformers import AutoConfig

from moecarve.cli import main
from moecarve.errors import RecipeError, UnsupportedExportError
from moecarve.export import targets
from moecarve.export.base import LayerLayout, common_layout, exact_tau
from moecarve.plan import plan
from moecarve.recipe import Recipe

pytestmark = pytest.mark.unit

BUILTIN_TARGETS = {"glm4_moe", "qwen2_moe", "reference"}  # pinned: saved recipes name them


def config_of(family: str, **changes) -> dict:
    return {**AutoConfig.for_model(family, **CONFIGS[family]).to_dict(), **changes}


def recipe(export, moe="S2A2E8", **extra) -> Recipe:
    # A bias-free, unbalanced router unless a test asks for balance (qwen2_moe cannot carry a bias).
    base = {"model": "tiny", "moe": moe, "export": export, "calibration": {"max_seq_length": 64},
            "router": {"method": "centroid", "balance": False}}  # fmt: skip
    return Recipe.parse({**base, **extra})


def test_builtin_targets_are_pinned_and_resolve():
    assert set(targets.names()) == BUILTIN_TARGETS
    for name in targets.names():
        assert targets.get(name).name == name


@pytest.mark.parametrize(
    "family, fmt, reason",
    [
        ("gpt2", "glm4_moe", "un-gated GELU MLP with biases"),
        ("opt", "qwen2_moe", "un-gated ReLU MLP"),
        ("bert", "glm4_moe", "bidirectional encoder"),
        ("gemma3_text", "glm4_moe", "sqrt(hidden_size)"),
        ("phi3", "qwen2_moe", "fused qkv_proj and gate_up_proj"),
        ("qwen3", "qwen2_moe", "q_norm / k_norm"),
    ],
)
def test_plan_refuses_sources_without_an_exact_native_class(family, fmt, reason):
    with pytest.raises(UnsupportedExportError) as e:
        plan(recipe(fmt), config_of(family))
    message = str(e.value)
    assert reason in message and "reference format" in message
    assert isinstance(e.value, RecipeError)  # the service answers 422, the CLI exits 2


@pytest.mark.parametrize(
    "family, changes, reason",
    [
        ("mistral", {"sliding_window": 16}, "sliding-window attention"),
        ("llama", {"mlp_bias": True}, "mlp_bias"),
        ("llama", {"attention_bias": True}, "output projection has a bias"),
    ],
)
@pytest.mark.parametrize("fmt", ["glm4_moe", "qwen2_moe"])
def test_plan_refuses_config_features_the_classes_lack(family, changes, reason, fmt):
    with pytest.raises(UnsupportedExportError, match=reason):
        plan(recipe(fmt), config_of(family, **changes))


def test_sliding_window_that_never_binds_is_fine():
    plan(recipe("glm4_moe"), config_of("mistral", sliding_window=4096, max_position_embeddings=512))
    plan(recipe("qwen2_moe"), config_of("qwen2", sliding_window=16, use_sliding_window=False))


def test_qwen2_moe_refuses_load_balancing_glm4_carries_it():
    balanced = {"router": {"balance": True}}
    with pytest.raises(UnsupportedExportError, match="e_score_correction_bias carries it"):
        plan(recipe("qwen2_moe", **balanced), config_of("llama"))
    plan(recipe("glm4_moe", **balanced), config_of("llama"))
    plan(recipe("qwen2_moe", moe="S2A6E8", **balanced), config_of("llama"))  # k = E: no bias is fitted


def test_router_methods_checked_at_plan_time():
    fitted = {"router": {"method": "fitted", "balance": False}}
    with pytest.raises(UnsupportedExportError, match="bias-free router"):
        plan(recipe("qwen2_moe", **fitted), config_of("llama"))
    plan(recipe("glm4_moe", **fitted), config_of("llama"))
    representative = {"router": {"method": "representative", "balance": False}}
    for fmt in ("glm4_moe", "qwen2_moe"):
        with pytest.raises(UnsupportedExportError, match="only 'linear' routers export"):
            plan(recipe(fmt, **representative), config_of("llama"))
    with pytest.raises(UnsupportedExportError, match="router.balance"):  # the carve defaults
        defaults = {"model": "tiny", "moe": "S2A2E8", "export": "qwen2_moe", "calibration": {"max_seq_length": 64}}
        plan(Recipe.parse(defaults), config_of("llama"))


def test_dense_layers_glm4_only_leading_qwen2_moe_anywhere():
    config = config_of("llama", num_hidden_layers=4)
    leading = recipe("glm4_moe", overrides=[{"layers": [0, 1], "dense": True}])
    plan(leading, config)
    inner = {"overrides": [{"layers": [2], "dense": True}]}
    with pytest.raises(UnsupportedExportError, match="first_k_dense_replace"):
        plan(recipe("glm4_moe", **inner), config)
    plan(recipe("qwen2_moe", **inner), config)
    with pytest.raises(UnsupportedExportError, match="every layer is dense"):
        plan(recipe("glm4_moe", overrides=[{"layers": [0, 1, 2, 3], "dense": True}]), config)


def test_per_layer_layouts_one_k_padding_where_the_class_can():
    config = config_of("llama")
    mixed_k = {"overrides": [{"layers": [1], "moe": "S2A3E8"}]}
    for fmt in ("glm4_moe", "qwen2_moe"):
        with pytest.raises(UnsupportedExportError, match="num_experts_per_tok"):
            plan(recipe(fmt, **mixed_k), config)
    mixed_e = {"overrides": [{"layers": [1], "moe": "S4A2E16"}]}
    plan(recipe("glm4_moe", **mixed_e), config)  # padded: zero neurons, never-selected zero experts
    with pytest.raises(UnsupportedExportError, match="different expert counts"):
        plan(recipe("qwen2_moe", **mixed_e), config)


def test_common_layout_pads_to_one_size():
    layers = [
        LayerLayout(0, True),
        LayerLayout(1, False, num_experts=6, num_experts_per_tok=2, expert_size=8, shared_size=16),
        LayerLayout(2, False, num_experts=12, num_experts_per_tok=2, expert_size=4, shared_size=20),
    ]
    layout = common_layout(layers, target="t", pad_experts=True, shared_unit=True)
    assert (layout.num_experts, layout.expert_size, layout.shared_size) == (12, 8, 24)
    assert layout.dense_layers == (0,)
    assert layout.padding == {
        1: {"expert_neurons": 0, "experts": 6, "shared_neurons": 8},
        2: {"expert_neurons": 4, "experts": 0, "shared_neurons": 4},
    }


def test_recipe_export_field_shorthands_and_errors():
    assert Recipe.parse({"moe": "S2A2E16", "export": "glm4_moe"}).export.formats == ["glm4_moe"]
    assert Recipe.parse({"moe": "S2A2E16", "export": ["glm4_moe", "qwen2_moe"]}).export.formats == ["glm4_moe", "qwen2_moe"]
    assert Recipe.parse({"moe": "S2A2E16"}).export.formats == []
    with pytest.raises(RecipeError, match="known: glm4_moe, qwen2_moe, reference"):
        Recipe.parse({"moe": "S2A2E16", "export": "mixtral"})
    with pytest.raises(RecipeError, match="always written"):
        Recipe.parse({"moe": "S2A2E16", "export": "reference"})
    with pytest.raises(RecipeError, match="tau"):
        Recipe.parse({"moe": "S2A2E16", "export": {"formats": ["glm4_moe"], "tau": 0}})
    with pytest.raises(RecipeError, match="score_scale"):
        Recipe.parse({"moe": "S2A2E16", "export": {"formats": ["glm4_moe"], "score_scale": 2}})


def test_tau_is_a_power_of_two_so_scaling_is_exact():
    assert exact_tau(1e-4) == 2.0**-13
    w = torch.randn(64, 32, dtype=torch.bfloat16)
    assert torch.equal((exact_tau(1e-4) * w).float() / exact_tau(1e-4), w.float())


def test_layer_taus_follow_the_score_scale():
    from moecarve.export.temperature import layer_taus

    taus = layer_taus({0: 0.05, 1: 0.4, 2: 0.0}, 1e-3)
    for i, std in ((0, 0.05), (1, 0.4)):
        assert 2**-0.5 <= taus[i] * std / 1e-3 <= 2**0.5
        assert taus[i] == exact_tau(taus[i])
    assert taus[2] == 1.0  # a constant router: nothing to flatten


def test_router_terms_refuse_non_linear_routers():
    from moecarve.export.weights import router_terms
    from moecarve.moe import MoEBlock

    block = MoEBlock(hidden_size=8, shared_size=0, num_experts=4, expert_size=2, num_experts_per_tok=2,
                     gated=True, activation="silu", up_bias=False, down_bias=False, router=torch.nn.Sequential())
    with pytest.raises(UnsupportedExportError, match="only 'linear' routers export"):
        router_terms(block, "glm4_moe", 3)


def test_cli_refuses_before_loading_weights(tmp_path, capsys):
    """A gpt2 'checkpoint' with an empty weights file: the refusal comes from config.json alone."""
    ckpt = tmp_path / "gpt2-carved"
    ckpt.mkdir()
    section = {"format_version": 1, "layers": {"0": {"num_experts": 6, "num_experts_per_tok": 2, "expert_size": 8, "shared_size": 16}}}
    (ckpt / "config.json").write_text(json.dumps({**config_of("gpt2"), "moecarve": section}))
    (ckpt / "model.safetensors").write_bytes(b"")
    assert main(["export", str(ckpt), "--format", "glm4_moe", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "UnsupportedExportError" in err and "GPT-2" in err and "reference format" in err
    assert not (tmp_path / "out").exists()
