"""Tensor math shared by the native writers: copying the base model, expert slices with zero
padding, router terms, and writing ``config.json`` + safetensors shards.

Per-expert tensors go to disk as 2-D ``...mlp.experts.{e}.{gate,up,down}_proj.weight`` (what
vLLM, llama.cpp converters and transformers v4 read; transformers v5 fuses them on load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from moecarve.architectures import ArchSpec
from moecarve.errors import UnsupportedExportError
from moecarve.moe import MoEBlock

MAX_SHARD_SIZE = "5GB"


def base_tensors(model: nn.Module, arch: ArchSpec, moe_layers: set[int]) -> dict[str, torch.Tensor]:
    """Every tensor of the reference model except the MoE blocks (and a tied ``lm_head``)."""
    skip = tuple(f"{arch.layers}.{i}.{arch.replace}." for i in moe_layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith(skip) or (tied and name == "lm_head.weight"):
            continue
        out[name] = t
    return out


def router_terms(block: MoEBlock, target: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (E, d), selection offset (E,)) in fp32: scores = x Wᵀ, selection on scores + offset.

    The offset is the router's own bias (if any) plus the load-balancing selection bias: both only
    move which experts are chosen, since every chosen expert has weight 1.
    """
    router = block.router
    weight = getattr(router, "weight", None)
    if getattr(router, "kind", None) != "linear" or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UnsupportedExportError(
            f"{target}: layer {layer} has a {getattr(router, 'kind', type(router).__name__)!r} router; native "
            "classes score experts with one linear map of the hidden state, so only 'linear' routers export. "
            "Carve with a linear router method, or keep the reference format"
        )
    offset = block.selection_bias.detach().float().clone()
    bias = getattr(router, "bias", None)
    if bias is not None:
        offset += bias.detach().float()
    return weight.detach().float(), offset


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Append zero rows (dim 0) up to ``rows``."""
    extra = rows - t.shape[0]
    return t if extra == 0 else torch.cat([t, t.new_zeros(extra, *t.shape[1:])], dim=0)


def pad_cols(t: torch.Tensor, cols: int) -> torch.Tensor:
    extra = cols - t.shape[1]
    return t if extra == 0 else torch.cat([t, t.new_zeros(t.shape[0], extra)], dim=1)


def shared_tensors(block: MoEBlock, size: int, prefix: str, down_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The shared expert as a gated MLP of ``size`` neurons (zero-padded): gate/up (size, d), down (d, size)."""
    return {
        f"{prefix}.gate_proj.weight": pad_rows(block.shared_gate.detach(), size),  # type: ignore[union-attr]
        f"{prefix}.up_proj.weight": pad_rows(block.shared_up.detach(), size),
        f"{prefix}.down_proj.weight": pad_cols(block.shared_down.detach() * down_scale, size),
    }


def expert_tensors(
    block: MoEBlock, num_experts: int, size: int, prefix: str, down_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per-expert 2-D tensors, each zero-padded to ``size`` neurons; experts past the block's are all zero."""
    d = block.hidden_size
    out = {}
    for e in range(num_experts):
        if e < block.num_experts:
            gate = pad_rows(block.experts_gate[e].detach(), size)  # type: ignore[index]  # (m, d)
            up = pad_rows(block.experts_up[e].detach(), size)  # (m, d)
            down = pad_cols(block.experts_down[e].detach() * down_scale, size)  # (d, m)
        else:
            gate, up = block.experts_up.new_zeros(size, d), block.experts_up.new_zeros(size, d)
            down = block.experts_up.new_zeros(d, size)
        out[f"{prefix}.{e}.gate_proj.weight"] = gate
        out[f"{prefix}.{e}.up_proj.weight"] = up
        out[f"{prefix}.{e}.down_proj.weight"] = down
    return out


def check_plain_block(block: MoEBlock, target: str, layer: int) -> None:
    """Native experts are bias-free gated MLPs."""
    if not block.gated or block.shared_up_bias is not None or block.down_bias is not None:
        raise UnsupportedExportError(
            f"{target}: layer {layer}'s experts are not bias-free gated MLPs (gated={block.gated}, "
            f"biases={block.shared_up_bias is not None or block.down_bias is not None}); keep the reference format"
        )


def write_config(out: Path, model_type: str, fields: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Validate ``fields`` with the transformers config class, then write config.json.

    Legacy keys (``rope_theta``, ``rope_scaling``, ``partial_rotary_factor``, ``torch_dtype``) are
    written beside v5's ``rope_parameters`` / ``dtype``: transformers v5 reads the latter, other
    runtimes the former, and both say the same thing.
    """
    from transformers import CONFIG_MAPPING, PretrainedConfig

    legacy = {k: fields[k] for k in ("rope_theta", "rope_scaling", "partial_rotary_factor")}
    config = CONFIG_MAPPING[model_type](**{k: v for k, v in fields.items() if k not in legacy})
    generic = set(PretrainedConfig().to_dict()) - set(fields) - {"architectures", "model_type", "transformers_version"}
    data = {k: v for k, v in config.to_dict().items() if k not in generic}  # class fields, not base-class noise
    data.update(legacy, dtype=dtype, torch_dtype=dtype)
    (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def save_tensors(out: Path, tensors: dict[str, torch.Tensor], dtype: str, keep_fp32: tuple[str, ...] = ()) -> list[str]:
    """Write safetensors (sharded past MAX_SHARD_SIZE, with an index); tensors named ``*keep_fp32`` stay fp32."""
    from huggingface_hub import split_torch_state_dict_into_shards

    target = getattr(torch, dtype)
    cast = {
        name: (t.float() if name.endswith(keep_fp32) else t.to(target)).contiguous()
        for name, t in tensors.items()
    }
    split = split_torch_state_dict_into_shards(cast, max_shard_size=MAX_SHARD_SIZE)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: cast[n] for n in names}, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in cast.values())},
                 "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return sorted(split.filename_to_tensors)
