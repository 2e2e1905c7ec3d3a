import json

import pytest
import torch
from conftest import tiny_recipe
from transformers import AutoTokenizer

import moecarve
from moecarve.checkpoint import atomic_write_dir, load_pretrained
from moecarve.errors import CheckpointError
from moecarve.moe import MoEBlock

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2", "opt", "bert"])
def test_save_load_round_trip_gives_identical_logits(family, tiny_dirs, calib_file, tmp_path):
    out = tmp_path / "out"
    result = moecarve.carve(tiny_recipe(tiny_dirs[family], calib_file), out)
    ids = torch.randint(3, 300, (2, 40))
    with torch.no_grad():
        before = result.model(input_ids=ids).logits
        loaded = load_pretrained(out)
        after = loaded(input_ids=ids).logits
    assert torch.equal(before, after)
    assert sum(isinstance(m, MoEBlock) for m in loaded.modules()) == 2
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("Emma Woodhouse")["input_ids"]
    for name in [
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "plan.json",
        "routing_stats.json",
        "neuron_stats.json",
        "evaluation.json",
        "moecarve.json",
        "README.md",
    ]:
        assert (out / name).is_file(), name
    stats = json.loads((out / "routing_stats.json").read_text())
    layer0 = stats["calibration"]["0"]
    assert len(layer0["expert_load"]) == 6 and abs(sum(layer0["expert_load"]) - 1) < 1e-5
    for key in ("load_cv", "router_entropy", "reconstruction_error", "recall"):
        assert 0 <= layer0[key] < 10
    assert stats["heldout"]["1"]["tokens"] == 2 * 64
    assert (out / "README.md").read_text().startswith("---\nbase_model:")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_bfloat16_checkpoint_loads(llama_dir, calib_file, tmp_path):
    recipe = {**tiny_recipe(llama_dir, calib_file), "dtype": "bfloat16"}
    moecarve.carve(recipe, tmp_path / "bf16")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.mlp.experts_up").dtype == torch.bfloat16
    assert (
        load_pretrained(tmp_path / "bf16")(input_ids=torch.tensor([[5, 6, 7]]))
        .logits.isfinite()
        .all()
    )


def test_failed_write_leaves_nothing(tmp_path):
    def write(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_dir(tmp_path / "ckpt", write)
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_non_checkpoints(tmp_path, llama_dir):
    with pytest.raises(CheckpointError, match="not a moecarve checkpoint"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no moecarve section"):
        load_pretrained(llama_dir)
