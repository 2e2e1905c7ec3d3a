"""``qwen2_moe``: ``Qwen2MoeForCausalLM`` (transformers), the most widely supported target.

Its MoE layer (transformers 5.23): ``p = softmax(x Wᵀ)`` over all E experts, top-k of ``p``, optional
renormalisation (``norm_topk_prob``), plus a shared MLP scaled by ``sigmoid(x · g)``. Unit weights:

- shared expert: ``g = 0`` gives exactly ``sigmoid(0) = 0.5``, so its down_proj is doubled (exact);
- routed experts, k > 1: router weight ``τ W`` (τ rounded to a power of two: exact) flattens the renormalised top-k weights to ``1/k``
  (relative error ≈ τ·spread(s)), and each routed down_proj is multiplied by k;
- k = 1: the renormalised top-1 weight is exactly 1, so the router is kept as is (τ = 1, exact).

There is no router bias and no selection bias in this class, so checkpoints that select with one
(a biased router, or ``router.balance``) are refused. Dense layers anywhere map to ``mlp_only_layers``.
q/k/v biases are written (zeros where the source has none): the runtimes that know this class expect them.
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

SHARED_GATE_FOLD = 2.0  # 1 / sigmoid(0)


def _no_selection_bias(target: str, where: str) -> UnsupportedExportError:
    return UnsupportedExportError(
        f"{target}: {where} selects experts with a bias (router.balance, or a router with a bias such as 'fitted'), "
        "but Qwen2MoeTopKRouter has no bias of any kind, so the export would pick different experts; export to "
        "glm4_moe (e_score_correction_bias carries it), or carve with a bias-free router: "
        "router: {method: centroid, balance: false}"
    )


class Qwen2MoeTarget(ExportTarget):
    name = "qwen2_moe"
    class_name = "Qwen2MoeForCausalLM"

    def check(self, config: dict[str, Any], layers: Sequence[LayerShape], *, selection_bias: bool = False) -> NativeLayout:
        source_features(config, self.name)
        layout = common_layout(layers, target=self.name, pad_experts=False)
        if selection_bias:
            raise _no_selection_bias(self.name, "this carve")
        return layout

    @staticmethod
    def router_scale(k: int, tau: float) -> tuple[float, float]:
        """(τ applied to the router, factor folded into each routed down_proj); top-1 needs neither."""
        return (tau, float(k)) if k > 1 else (1.0, 1.0)

    def config_fields(self, request: ExportRequest, layout: NativeLayout) -> dict[str, Any]:
        n = int(request.config["num_hidden_layers"])
        return {
            **common_fields(request.model.config.to_dict()),
            "architectures": [self.class_name],
            "qkv_bias": True,
            "use_sliding_window": False,
            "max_window_layers": n,
            "decoder_sparse_step": 1,
            "mlp_only_layers": list(layout.dense_layers),
            "num_experts": layout.num_experts,
            "num_experts_per_tok": layout.num_experts_per_tok,
            "moe_intermediate_size": layout.expert_size,
            "shared_expert_intermediate_size": layout.shared_size,
            "norm_topk_prob": True,
        }

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        import torch

        from moecarve.architectures import arch_for
        from moecarve.export import weights as W

        layout = self.check(request.config, request.layers)
        blocks = request.blocks()
        k = layout.num_experts_per_tok
        taus = {i: self.router_scale(k, t)[0] for i, t in request.taus.items()}
        fold = self.router_scale(k, 1.0)[1]
        tensors = W.base_tensors(request.model, arch_for(request.config), set(blocks))
        for i, block in blocks.items():
            W.check_plain_block(block, self.name, i)
            weight, offset = W.router_terms(block, self.name, i)
            if offset.abs().max() > 0:
                raise _no_selection_bias(self.name, f"layer {i}")
            prefix = f"model.layers.{i}.mlp"
            tensors[f"{prefix}.gate.weight"] = taus[i] * weight
            tensors[f"{prefix}.shared_expert_gate.weight"] = torch.zeros(1, block.hidden_size)
            tensors.update(W.shared_tensors(block, layout.shared_size, f"{prefix}.shared_expert", SHARED_GATE_FOLD))
            tensors.update(W.expert_tensors(block, layout.num_experts, layout.expert_size, f"{prefix}.experts", fold))
        zero_biases = _zero_qkv_biases(request, tensors)
        W.write_config(out, self.name, self.config_fields(request, layout), request.dtype)
        files = W.save_tensors(out, tensors, request.dtype)
        return {
            "class": self.class_name,
            "layout": layout.to_dict(),
            "tau": {str(i): t for i, t in taus.items()},
            "routed_down_proj_fold": fold,
            "shared_down_proj_fold": SHARED_GATE_FOLD,
            "zero_qkv_biases_added": zero_biases,
            "weight_files": files,
        }


def _zero_qkv_biases(request: ExportRequest, tensors: dict[str, Any]) -> bool:
    """Add zero q/k/v biases where the source has none (Qwen2MoE attention always has them)."""
    added = False
    for name in [n for n in tensors if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight"))]:
        bias = name[: -len("weight")] + "bias"
        if bias not in tensors:
            tensors[bias] = tensors[name].new_zeros(tensors[name].shape[0])
            added = True
    return added


TARGET = Qwen2MoeTarget()
