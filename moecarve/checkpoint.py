"""The reference checkpoint format (every architecture; DESIGN.md §4.1).

A ``save_pretrained``-style directory: ``config.json`` of the base architecture with a
``moecarve`` section (per layer: block sizes, router kind and constructor arguments),
``model.safetensors`` holding the MoE model's state (FFN weights as expert slices, routers,
selection biases, neuron maps), tokenizer files, and JSON/YAML/Markdown side files.
Writes go to a temporary sibling directory renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import routers
from moecarve.architectures import arch_for
from moecarve.carving import decoder_layers, install_block
from moecarve.errors import CheckpointError
from moecarve.moe import MoEBlock

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


def moe_section(blocks: dict[int, MoEBlock]) -> dict[str, Any]:
    layers = {}
    for i, block in sorted(blocks.items()):
        router = block.router
        layers[str(i)] = {
            **block.spec(),
            "router": {"kind": router.kind, "config": router.config()},  # type: ignore[union-attr]
        }
    return {"format_version": FORMAT_VERSION, "layers": layers}


def prepare_output_dir(out: Path, overwrite: bool = False) -> None:
    """Refuse to clobber a non-empty directory unless asked (nothing is written here)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise CheckpointError(
            f"output {out} already exists and is not empty; choose another path or pass overwrite"
        )


def atomic_write_dir(out: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(tmp)`` in a temporary sibling of ``out``, then rename it into place."""
    out = Path(out)
    prepare_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def unique_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """State dict with tied tensors (shared storage) written once, cast to ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.numel())
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.to(dtype if t.is_floating_point() else t.dtype).contiguous()
    return out


def save_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    blocks: dict[int, MoEBlock],
    out: str | Path,
    side_files: dict[str, Any],
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write the reference checkpoint; ``side_files`` maps names to JSON objects or text."""

    def write(tmp: Path) -> None:
        model.config.moecarve = moe_section(blocks)
        model.config.save_pretrained(tmp)
        tensors = unique_state(model, getattr(torch, dtype))
        save_file(
            tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "moecarve": str(FORMAT_VERSION)}
        )
        tokenizer.save_pretrained(tmp)
        for name, content in side_files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                write_json(tmp / name, content)

    return atomic_write_dir(Path(out), write, overwrite)


def load_pretrained(path: str | Path, dtype: str | None = None) -> nn.Module:
    """Rebuild a carved model from a reference checkpoint (a transformers model object).

    The base architecture is built by transformers from ``config.json``; its FFNs are swapped for
    MoE blocks described by the ``moecarve`` section, then the saved state is loaded strictly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(
            f"{path} is not a moecarve checkpoint (needs config.json and {WEIGHTS})"
        )
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    section = getattr(config, "moecarve", None)
    if not isinstance(section, dict) or section.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}/config.json has no moecarve section of format {FORMAT_VERSION}"
        )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    arch = arch_for(config.to_dict())
    layers = decoder_layers(model, arch)
    for key, spec in section["layers"].items():
        spec = dict(spec)
        router_spec = spec.pop("router")
        router = routers.kinds.get(router_spec["kind"])(**router_spec["config"])
        install_block(layers[int(key)], arch, MoEBlock(**spec, router=router))
    state = load_file(str(path / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = model.state_dict()
    loaded = {(own[k].data_ptr(), own[k].numel()) for k in state if k in own}
    missing = [
        k for k in missing if (own[k].data_ptr(), own[k].numel()) not in loaded
    ]  # tied copies are fine
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    if dtype is not None:
        model.to(getattr(torch, dtype))
    return model.eval()
