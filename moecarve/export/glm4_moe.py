"""``glm4_moe``: ``Glm4MoeForCausalLM`` (transformers), best target for llama / mistral / qwen2 / qwen3.

Its MoE layer (transformers 5.23): ``s = sigmoid(x Wᵀ)`` in fp32, top-k on ``s + e_score_correction_bias``
(the bias only selects), weights ``s_i / Σ_selected s_j × routed_scaling_factor``, plus an un-gated
shared MLP of ``n_shared_experts × moe_intermediate_size`` neurons. Unit expert weights (DESIGN.md §4):

- τ-flattening: the router weight becomes ``τ W`` (τ rounded to a power of two, so this is exact). Then ``sigmoid(τ s) ≈ 1/2 + τ s / 4`` keeps the top-k
  order and the renormalised weights collapse to ``1/k`` (relative error ≈ τ·spread(s)/2);
  ``routed_scaling_factor = k`` folds the constant back, so each selected expert weighs ≈ 1.
- Selection offsets (router bias + load-balancing bias β) map through the same first-order slope:
  ``e_score_correction_bias = τ β / 4`` (the cubic term of the sigmoid is below fp32 resolution).
- Layers with fewer experts get zero experts with ``e_score_correction_bias = -1e4`` (never selected);
  smaller experts / shared parts are padded with zero neurons (exact). Leading dense layers map to
  ``first_k_dense_replace``. ``partial_rotary_factor: 1.0`` is explicit: the class (and vLLM) default to 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moecarve.errors import UnsupportedExportError
from moecarve.export.base import (
    ExportRequest,
    ExportTarget,
    LayerShape,
    NativeLayout,
    common_layout,
)
from moecarve.export.sources import common_fields, source_features

NEVER = -1.0e4  # e_score_correction_bias of padded experts: sigmoid scores lie in (0, 1)


class Glm4MoeTarget(ExportTarget):
    name = "glm4_moe"
    class_name = "Glm4MoeForCausalLM"

    def check(self, config: dict[str, Any], layers: Sequence[LayerShape], *, selection_bias: bool = False) -> NativeLayout:
        source_features(config, self.name)
        # min_experts=2: the router's group scoring takes a top-2 inside its (single) group.
        layout = common_layout(layers, target=self.name, pad_experts=True, min_experts=2, shared_unit=True)
        leading = tuple(range(len(layout.dense_layers)))
        if layout.dense_layers != leading:
            raise UnsupportedExportError(
                f"{self.name}: Glm4MoeForCausalLM keeps only the first layers dense (first_k_dense_replace), but the "
                f"dense layers are {list(layout.dense_layers)}; export to qwen2_moe (mlp_only_layers holds any dense "
                "layers), or keep only leading layers dense"
            )
        return layout

    def config_fields(self, request: ExportRequest, layout: NativeLayout) -> dict[str, Any]:
        features = source_features(request.config, self.name)
        k = layout.num_experts_per_tok
        return {
            **common_fields(request.model.config.to_dict()),
            "architectures": [self.class_name],
            "attention_bias": features.qkv_bias,
            "use_qk_norm": features.qk_norm,
            "moe_intermediate_size": layout.expert_size,
            "n_routed_experts": layout.num_experts,
            "n_shared_experts": layout.shared_size // layout.expert_size,
            "num_experts_per_tok": k,
            "norm_topk_prob": True,
            "routed_scaling_factor": float(k),
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": len(layout.dense_layers),
            "num_nextn_predict_layers": 0,
        }

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        import torch

        from moecarve.architectures import arch_for
        from moecarve.export import weights as W

        layout = self.check(request.config, request.layers)
        blocks = request.blocks()
        tensors = W.base_tensors(request.model, arch_for(request.config), set(blocks))
        E, m = layout.num_experts, layout.expert_size
        for i, block in blocks.items():
            W.check_plain_block(block, self.name, i)
            weight, offset = W.router_terms(block, self.name, i)
            prefix, tau = f"model.layers.{i}.mlp", request.taus[i]
            never = torch.full((E - block.num_experts,), NEVER)
            tensors[f"{prefix}.gate.weight"] = W.pad_rows(tau * weight, E)
            tensors[f"{prefix}.gate.e_score_correction_bias"] = torch.cat([tau * offset / 4, never])
            tensors.update(W.shared_tensors(block, layout.shared_size, f"{prefix}.shared_experts"))
            tensors.update(W.expert_tensors(block, E, m, f"{prefix}.experts"))
        W.write_config(out, self.name, self.config_fields(request, layout), request.dtype)
        files = W.save_tensors(out, tensors, request.dtype, keep_fp32=("e_score_correction_bias",))
        return {
            "class": self.class_name,
            "layout": layout.to_dict(),
            "tau": {str(i): t for i, t in request.taus.items()},
            "routed_scaling_factor": float(layout.num_experts_per_tok),
            "selection_offset": "e_score_correction_bias = tau * (router bias + selection bias) / 4",
            "weight_files": files,
        }


TARGET = Glm4MoeTarget()
