"""What every export target shares: the per-layer layouts it reads and the one it writes.

Pure Python (no torch): ``plan`` checks an export request from the config alone.
Native MoE classes have ONE expert count, expert size, top-k and shared size for all MoE layers;
``common_layout`` finds it, padding with zero neurons (exact: a zero gate/up row and a zero
down column add nothing) or with zero experts that can never be selected, where a target can.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from moecarve.errors import UnsupportedExportError

# The unit-weight recipe (DESIGN.md §4) multiplies each router by a small τ. By default τ is chosen
# per layer so that the flattened scores τ·s have this standard deviation (moecarve/export/temperature.py;
# docs/export.md has the measured trade-off: larger leaves expert weights further from 1, smaller lets
# fp32 rounding of the flattened scores swap near-tied experts).
DEFAULT_SCORE_SCALE = 1e-3


def exact_tau(tau: float) -> float:
    """τ rounded to a power of two: then ``τ·W`` and ``τ·(x Wᵀ)`` are exact in fp32, bf16 and fp16, so the
    exported router scores are exactly τ times the reference scores (no new rounding, no re-ordering)."""
    return 2.0 ** round(math.log2(tau))


class LayerShape(Protocol):
    """A carved (or dense) layer's sizes: ``plan.LayerPlan`` and ``LayerLayout`` both fit."""

    layer: int
    dense: bool
    num_experts: int
    num_experts_per_tok: int
    expert_size: int
    shared_size: int


@dataclass(frozen=True)
class LayerLayout:
    layer: int
    dense: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    expert_size: int = 0
    shared_size: int = 0


@dataclass(frozen=True)
class NativeLayout:
    """Global sizes of a native MoE config, and the zero padding each carved layer needs."""

    num_layers: int
    num_experts: int  # routed experts per MoE layer (E)
    num_experts_per_tok: int  # k
    expert_size: int  # moe_intermediate_size (m)
    shared_size: int  # shared-expert neurons per MoE layer
    dense_layers: tuple[int, ...] = ()
    padding: dict[int, dict[str, int]] = field(default_factory=dict)  # layer → zero neurons / experts added

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        d["padding"] = {str(i): p for i, p in self.padding.items()}
        return d


def common_layout(
    layers: Sequence[LayerShape], *, target: str, pad_experts: bool, min_experts: int = 1, shared_unit: bool = False
) -> NativeLayout:
    """The one layout a native class can hold for all carved layers.

    Args:
        layers: every decoder layer, in order (dense ones included).
        target: the export format (for messages).
        pad_experts: whether layers with fewer experts may be padded with never-selected zero experts.
        min_experts: the class's smallest usable expert count (padding up to it).
        shared_unit: the shared size must be a whole number of experts (``n_shared_experts``).

    Raises:
        UnsupportedExportError: no single layout holds every layer exactly.
    """
    carved = [lp for lp in layers if not lp.dense]
    if not carved:
        raise UnsupportedExportError(
            f"{target}: every layer is dense, so there is no MoE to export; keep the dense model or the reference format"
        )
    ks = sorted({lp.num_experts_per_tok for lp in carved})
    if len(ks) > 1:
        raise UnsupportedExportError(
            f"{target}: layers select different numbers of experts per token (k ∈ {ks}), but the native class has one "
            "num_experts_per_tok; use the same k in every override, or keep the reference format"
        )
    counts = sorted({lp.num_experts for lp in carved})
    if len(counts) > 1 and not pad_experts:
        raise UnsupportedExportError(
            f"{target}: layers have different expert counts (E ∈ {counts}) and this class cannot hide padded experts "
            "from its router (no selection bias); use the same E in every override, or export to glm4_moe"
        )
    m = max(lp.expert_size for lp in carved)
    E = max(max(counts), min_experts)
    shared = max(lp.shared_size for lp in carved)
    if shared_unit:
        shared = -(-shared // m) * m  # round up to whole experts
    padding = {}
    for lp in carved:
        pad = {
            "expert_neurons": m - lp.expert_size,
            "experts": E - lp.num_experts,
            "shared_neurons": shared - lp.shared_size,
        }
        if any(pad.values()):
            padding[lp.layer] = pad
    return NativeLayout(
        num_layers=len(layers),
        num_experts=E,
        num_experts_per_tok=ks[0],
        expert_size=m,
        shared_size=shared,
        dense_layers=tuple(lp.layer for lp in layers if lp.dense),
        padding=padding,
    )


@dataclass
class ExportRequest:
    """Everything a target's writer gets (``model`` is the loaded reference model)."""

    checkpoint_dir: Path
    config: dict[str, Any]  # the source architecture's config.json, without the moecarve section
    layers: list[LayerLayout]
    model: Any = None
    tokenizer: Any = None
    taus: dict[int, float] = field(default_factory=dict)  # MoE layer → router temperature τ (power of two)
    dtype: str = "float32"

    def blocks(self) -> dict[int, Any]:
        """Layer index → the reference model's MoE block, for every carved layer."""
        from moecarve.architectures import arch_for
        from moecarve.carving import decoder_layers
        from moecarve.ffn import submodule

        arch = arch_for(self.config)
        layers = decoder_layers(self.model, arch)
        return {lp.layer: submodule(layers[lp.layer], arch.replace) for lp in self.layers if not lp.dense}


class ExportTarget:
    """An export format: a pure feasibility check and a writer.

    Subclasses set ``name`` and ``class_name`` and implement ``check`` and ``write``.
    """

    name: ClassVar[str]
    class_name: ClassVar[str]  # what loads it ("Glm4MoeForCausalLM", "moecarve.load_pretrained")
    native: ClassVar[bool] = True

    def check(self, config: dict[str, Any], layers: Sequence[LayerShape], *, selection_bias: bool = False) -> NativeLayout | None:
        """Raise ``UnsupportedExportError`` (saying why and what to do) if this target cannot hold the carve.

        ``selection_bias``: some layer selects with a non-zero bias (router bias or load balancing).
        """
        raise NotImplementedError

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        """Write the export into the (empty, temporary) directory ``out``; return conversion metadata."""
        raise NotImplementedError
