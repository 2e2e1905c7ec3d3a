from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import FAMILIES, save_tiny, tiny_tokenizer  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A saved tiny random model directory (weights + tokenizer) per supported family."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {f: save_tiny(f, root / f, tokenizer) for f in FAMILIES}


@pytest.fixture(scope="session")
def llama_dir(tiny_dirs) -> Path:
    return tiny_dirs["llama"]


@pytest.fixture
def calib_file(tmp_path) -> Path:
    from moecarve.calibration import embedded_text

    path = tmp_path / "calib.txt"
    path.write_text(embedded_text("calibration")[:40_000])
    return path


def tiny_recipe(model_dir: Path, calib: Path, **moe) -> dict:
    """A recipe dict for a tiny model: small windows, small sample, quick evaluation."""
    return {
        "model": str(model_dir),
        "moe": moe or {"num_experts": 6, "num_experts_per_tok": 2, "num_shared_experts": 2},
        "calibration": {"path": str(calib), "num_calibration_samples": 4, "max_seq_length": 64},
        "evaluation": {"path": str(calib), "max_windows": 2, "window": 64},
        "profile": {"sample_tokens": 128},
    }
