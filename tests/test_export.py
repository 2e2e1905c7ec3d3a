"""Round trips: carve → export → stock ``AutoModelForCausalLM.from_pretrained`` → same logits.

Tolerances are the measured ones (docs/export.md): with the default τ the native classes give
every selected expert a weight of 1 ± O(τ·score spread), and fp32 rounding of the flattened scores
can swap two near-tied experts, rarely, on random models.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import moecarve
from moecarve.checkpoint import load_pretrained
from moecarve.cli import main
from moecarve.errors import UnsupportedExportError
from moecarve.export import export

pytestmark = pytest.mark.integration

TOL = 2e-4  # max |Δ logit| vs the reference (and vs dense when k = E), fp32, default score_scale
FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
PAIRS = [(f, fmt) for f in FAMILIES for fmt in ("glm4_moe", "qwen2_moe") if (f, fmt) != ("qwen3", "qwen2_moe")]
_CARVED: dict[tuple, Path] = {}


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    from moecarve.calibration import embedded_text

    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(embedded_text("calibration")[:40_000])
    return path


@pytest.fixture(scope="module")
def carved(tiny_dirs, calib, tmp_path_factory):
    """carved(family, layout, **recipe changes) → a reference checkpoint, carved once per module."""

    def get(family: str, layout: str = "S2A2E8", **changes) -> Path:
        key = (family, layout, json.dumps(changes, sort_keys=True))
        if key not in _CARVED:
            # qwen2_moe cannot carry a selection bias: carve with a bias-free, unbalanced router
            # unless a test asks otherwise (the fitted router and balance are the carve defaults).
            # The partition is pinned to coact's random k-means start: with the k-means++ start (the
            # default) two of these tiny carves (mistral S0A2E8; llama in bf16) export to glm4_moe
            # with max |Δlogit| 0.010 / 0.007 instead of < 2e-4. Traced for mistral: in layer 1 the
            # k-th and (k+1)-th router scores of one token differ by 3.0e-5, and glm4_moe's τ-scaled
            # scores break that near-tie the other way (qwen2_moe matches to 2.6e-5) — the
            # flattened-score ties of docs/export.md, not a conversion error. The tests check the
            # conversion, so they use carves without such near-ties.
            unbiased = {"router": {"method": "centroid", "balance": False},
                        "partition": {"method": "coact", "options": {"init": "random"}}}
            recipe = {**tiny_recipe(tiny_dirs[family], calib), "moe": layout, **unbiased, **changes}
            recipe["evaluation"] = {**recipe["evaluation"], "enabled": False}  # the export measures its own
            out = tmp_path_factory.mktemp(f"{family}-{layout}")
            _CARVED[key] = moecarve.carve(recipe, out, overwrite=True).output_dir
        return _CARVED[key]

    return get


def ids(n: int = 3, length: int = 48) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(3, 300, (n, length))


def stock(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()


@torch.no_grad()
def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    x = ids()
    return float((a(input_ids=x).logits - b(input_ids=x).logits).abs().max())


@pytest.mark.parametrize("family, fmt", PAIRS)
def test_export_matches_the_reference(family, fmt, carved, tmp_path):
    ckpt = carved(family)
    result = export(ckpt, fmt, tmp_path / fmt)
    model = stock(tmp_path / fmt)
    assert type(model).__name__ == {"glm4_moe": "Glm4MoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}[fmt]
    assert max_diff(model, load_pretrained(ckpt)) < TOL
    fid = result.metadata["fidelity"]
    assert fid["max_abs_logit_diff"] < TOL and fid["argmax_agreement"] > 0.99
    assert abs(fid["perplexity_export"] / fid["perplexity_reference"] - 1) < 1e-3


@pytest.mark.parametrize("family, fmt", PAIRS)
def test_k_equals_e_export_matches_the_dense_model(family, fmt, carved, tiny_dirs, tmp_path):
    export(carved(family, "S2A6E8"), fmt, tmp_path / fmt, verify=False)
    assert max_diff(stock(tmp_path / fmt), stock(tiny_dirs[family])) < TOL


def test_the_dense_comparison_can_fail(carved, tiny_dirs, tmp_path):
    export(carved("llama"), "glm4_moe", tmp_path / "k2", verify=False)  # k = 2 of 6 drops neurons
    assert max_diff(stock(tmp_path / "k2"), stock(tiny_dirs["llama"])) > 10 * TOL


def test_glm4_moe_carries_the_selection_bias(carved, tmp_path):
    ckpt = carved("llama", router={"balance": True})
    ref = load_pretrained(ckpt)
    assert ref.model.layers[0].mlp.selection_bias.abs().max() > 0
    export(ckpt, "glm4_moe", tmp_path / "glm4")
    assert max_diff(stock(tmp_path / "glm4"), ref) < TOL
    meta = json.loads((tmp_path / "glm4" / "export.json").read_text())
    assert meta["fidelity"]["selection_diff_fraction"] < 0.02
    assert meta["fidelity"]["isolated_selection_diff_fraction"] < 0.02
    with pytest.raises(UnsupportedExportError, match="router.balance"):
        export(ckpt, "qwen2_moe", tmp_path / "qwen2")
    assert not (tmp_path / "qwen2").exists()


def test_default_carve_exports_to_glm4_moe(tiny_dirs, calib, tmp_path):
    """The carve defaults (fitted linear router with a bias, balance, down refit) export to glm4_moe."""
    recipe = {**tiny_recipe(tiny_dirs["llama"], calib), "export": "glm4_moe"}
    result = moecarve.carve(recipe, tmp_path / "out")
    ref = result.model
    assert ref.model.layers[0].mlp.router.bias is not None
    assert max_diff(stock(tmp_path / "out" / "exports" / "glm4_moe"), ref) < TOL
    with pytest.raises(UnsupportedExportError, match="router.balance"):
        export(tmp_path / "out", "qwen2_moe", tmp_path / "qwen2")


def test_non_linear_router_is_refused(carved, tmp_path):
    ckpt = carved("llama", router={"method": "representative", "balance": False})
    for fmt in ("glm4_moe", "qwen2_moe"):
        with pytest.raises(UnsupportedExportError, match="only 'linear' routers export"):
            export(ckpt, fmt, tmp_path / fmt)
        assert not (tmp_path / fmt).exists()


def test_glm4_moe_carries_a_router_bias(carved, tmp_path):
    """A biased linear router (a future router method could fit one) maps into e_score_correction_bias."""
    from moecarve.checkpoint import save_checkpoint
    from routers.linear import LinearRouter

    ref = load_pretrained(carved("qwen2"))
    torch.manual_seed(3)
    blocks = {}
    for i, layer in enumerate(ref.model.layers):
        old = layer.mlp.router
        router = LinearRouter(old.weight.shape[1], old.weight.shape[0], bias=True)
        with torch.no_grad():
            router.weight.copy_(old.weight)
            router.bias.normal_(0, float(old.weight.norm(dim=1).mean()))
        layer.mlp.router = router
        blocks[i] = layer.mlp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(carved("qwen2"))
    save_checkpoint(ref, tok, blocks, tmp_path / "biased", side_files={})
    export(tmp_path / "biased", "glm4_moe", tmp_path / "glm4", verify=False)
    reloaded = load_pretrained(tmp_path / "biased")
    assert max_diff(stock(tmp_path / "glm4"), reloaded) < TOL
    with pytest.raises(UnsupportedExportError, match="no bias"):
        export(tmp_path / "biased", "qwen2_moe", tmp_path / "qwen2", verify=False)


@pytest.mark.parametrize("fmt", ["glm4_moe", "qwen2_moe"])
def test_leading_dense_layer(fmt, carved, tmp_path):
    ckpt = carved("llama", overrides=[{"layers": [0], "dense": True}])
    export(ckpt, fmt, tmp_path / fmt, verify=False)
    config = json.loads((tmp_path / fmt / "config.json").read_text())
    key, value = {"glm4_moe": ("first_k_dense_replace", 1), "qwen2_moe": ("mlp_only_layers", [0])}[fmt]
    assert config[key] == value
    assert max_diff(stock(tmp_path / fmt), load_pretrained(ckpt)) < TOL


def test_glm4_moe_pads_mixed_layouts_exactly(carved, tmp_path):
    ckpt = carved("qwen3", overrides=[{"layers": [1], "moe": "S4A2E16"}])  # layer 1: E=12 of 4 neurons
    result = export(ckpt, "glm4_moe", tmp_path / "glm4", verify=False)
    layout = result.metadata["conversion"]["layout"]
    assert (layout["num_experts"], layout["expert_size"], layout["shared_size"]) == (12, 8, 16)
    assert layout["padding"] == {"0": {"expert_neurons": 0, "experts": 6, "shared_neurons": 0},
                                 "1": {"expert_neurons": 4, "experts": 0, "shared_neurons": 0}}
    assert max_diff(stock(tmp_path / "glm4"), load_pretrained(ckpt)) < TOL


def test_no_shared_expert(carved, tmp_path):
    ckpt = carved("mistral", "S0A2E8")
    for fmt in ("glm4_moe", "qwen2_moe"):
        export(ckpt, fmt, tmp_path / fmt, verify=False)
        assert max_diff(stock(tmp_path / fmt), load_pretrained(ckpt)) < TOL


def test_glm4_moe_files_on_disk(carved, tmp_path):
    out = tmp_path / "glm4"
    export(carved("qwen3"), "glm4_moe", out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Glm4MoeForCausalLM"] and "moecarve" not in config
    assert config["partial_rotary_factor"] == 1.0 and config["rope_parameters"]["partial_rotary_factor"] == 1.0
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and "rope_scaling" in config
    assert config["use_qk_norm"] is True and config["attention_bias"] is False
    assert (config["n_routed_experts"], config["num_experts_per_tok"], config["moe_intermediate_size"]) == (6, 2, 8)
    assert config["n_shared_experts"] == 2 and config["routed_scaling_factor"] == 2.0 and config["norm_topk_prob"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.layers.1.mlp.experts.5.down_proj.weight").get_shape() == [32, 8]
        assert f.get_slice("model.layers.1.mlp.experts.0.gate_proj.weight").get_shape() == [8, 32]
        assert f.get_tensor("model.layers.0.mlp.gate.e_score_correction_bias").dtype == torch.float32
    assert not any("gate_up_proj" in k or "experts_up" in k for k in keys)
    assert "model.layers.0.self_attn.q_norm.weight" in keys
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "library_name: transformers" in card and "from_pretrained" in card
    meta = json.loads((out / "export.json").read_text())
    fid = meta["fidelity"]
    for key in ("max_abs_logit_diff", "mean_abs_logit_diff", "selection_diff_fraction", "tokens_with_selection_diff", "isolated_selection_diff_fraction",
                "perplexity_reference", "perplexity_export"):
        assert isinstance(fid[key], float), key
    assert f"{fid['max_abs_logit_diff']:.3g}" in card and f"{fid['perplexity_export']:.3f}" in card
    for name in ("recipe.yaml", "plan.json", "routing_stats.json", "neuron_stats.json", "tokenizer.json"):
        assert (out / name).is_file(), name


def test_qwen2_moe_files_on_disk(carved, tmp_path):
    out = tmp_path / "qwen2"
    export(carved("llama"), "qwen2_moe", out, verify=False)
    config = json.loads((out / "config.json").read_text())
    assert config["qkv_bias"] is True and config["norm_topk_prob"] is True
    assert config["shared_expert_intermediate_size"] == 16
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not f.get_tensor("model.layers.0.self_attn.q_proj.bias").any()  # llama has none: zeros
        assert not f.get_tensor("model.layers.0.mlp.shared_expert_gate.weight").any()  # sigmoid(0) = 0.5
        assert f.get_slice("model.layers.0.mlp.experts.3.up_proj.weight").get_shape() == [8, 32]


def test_bfloat16_checkpoint_exports_in_bfloat16(carved, tmp_path):
    ckpt = carved("llama", dtype="bfloat16")
    result = export(ckpt, "glm4_moe", tmp_path / "bf16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.mlp.experts.0.up_proj.weight").dtype == torch.bfloat16
    # τ is a power of two, so the bf16 router scores are exactly τ × the reference's.
    assert result.metadata["fidelity"]["max_abs_logit_diff"] < TOL


def test_reference_export_copies_without_nested_exports(carved, tmp_path):
    src = carved("llama")
    export(src, "reference", tmp_path / "ref")
    assert not (tmp_path / "ref" / "exports").exists()
    assert max_diff(load_pretrained(tmp_path / "ref"), load_pretrained(src)) == 0


def test_carve_runs_the_recipe_exports(tiny_dirs, calib, tmp_path):
    recipe = {
        **tiny_recipe(tiny_dirs["qwen2"], calib),
        "router": {"method": "centroid", "balance": False},
        "export": ["glm4_moe", "qwen2_moe"],
    }
    result = moecarve.carve(recipe, tmp_path / "out")
    for fmt in ("glm4_moe", "qwen2_moe"):
        assert result.exports[fmt]["fidelity"]["max_abs_logit_diff"] < TOL
        assert max_diff(stock(tmp_path / "out" / "exports" / fmt), result.model) < TOL


def test_cli_export(carved, tmp_path, capsys):
    code = main(["export", str(carved("llama")), "--format", "glm4_moe", str(tmp_path / "cli"), "--quiet", "--windows", "1", "--json"])
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["format"] == "glm4_moe" and meta["fidelity"]["windows"] == 1
    assert main(["export", str(carved("llama")), "--format", "glm4_moe", str(tmp_path / "cli")]) == 2  # not empty
