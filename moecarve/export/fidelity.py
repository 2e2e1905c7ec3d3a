"""Fidelity of an export against the exact reference model, on held-out text.

Per window, both models score the same tokens; the report gives max / mean |Δ logit|, how often
the greedy next token agrees, the fraction of (token, layer) routing decisions and of tokens whose
selected experts differ, and the perplexity of both. Selections are read where each model makes
them: the reference MoE block's recorder and the native router's ``topk_indices`` output.

Routing differences compound: one swapped expert perturbs every later layer's input, and top-k over
many fine experts has near-ties that any perturbation flips. So the report also gives the
*isolated* rate — each native router fed the reference model's own layer inputs — which measures
the export's conversion alone (τ-flattening ties), apart from the carved model's sensitivity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from moecarve.moe import MoEBlock, recording
from moecarve.progress import ProgressEvent, ProgressFn, no_progress


class _Selections:
    """Sorted top-k expert ids per layer for the current forward pass."""

    def __init__(self) -> None:
        self.by_layer: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, torch.Tensor] = {}  # reference only: each MoE layer's input (T, d)

    def reference_recorder(self, layer: int) -> Any:
        def record(block: MoEBlock, x: torch.Tensor, scores: torch.Tensor, selected: torch.Tensor) -> None:
            self.by_layer[layer] = selected.sort(dim=-1).values
            self.inputs[layer] = x

        return record

    def router_hook(self, layer: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.by_layer[layer] = output[2].reshape(-1, output[2].shape[-1]).sort(dim=-1).values

        return hook


def native_routers(model: nn.Module, layers: list[int]) -> dict[int, nn.Module]:
    """The router module (``mlp.gate``) of each MoE layer of a native GLM4-MoE / Qwen2-MoE model."""
    return {i: model.model.layers[i].mlp.gate for i in layers}  # type: ignore[index,union-attr]


@torch.no_grad()
def fidelity_report(
    reference: nn.Module,
    reference_blocks: dict[int, MoEBlock],
    exported: nn.Module,
    rows: torch.Tensor,
    progress: ProgressFn = no_progress,
    stage: str = "fidelity",
) -> dict[str, Any]:
    """Compare ``exported`` with ``reference`` on ``rows`` (N, L); both fp32, eval mode."""
    ref_sel, exp_sel = _Selections(), _Selections()
    routers = native_routers(exported, list(reference_blocks))
    handles = [r.register_forward_hook(exp_sel.router_hook(i)) for i, r in routers.items()]
    max_abs, sum_abs, n_logits = 0.0, 0.0, 0
    nll_ref, nll_exp, agree, tokens = 0.0, 0.0, 0, 0
    decisions, decision_diff, token_diff, isolated_diff = 0, 0, 0, 0
    with recording(reference_blocks, {i: ref_sel.reference_recorder(i) for i in reference_blocks}):
        try:
            for w, row in enumerate(rows):
                progress(ProgressEvent(stage, w, len(rows), f"window {w + 1}/{len(rows)}"))
                ids = row.unsqueeze(0)
                a = reference(input_ids=ids, use_cache=False).logits[0].float()  # (L, V)
                b = exported(input_ids=ids, use_cache=False).logits[0].float()
                diff = (a - b).abs()
                max_abs = max(max_abs, float(diff.max()))
                sum_abs += float(diff.sum())
                n_logits += diff.numel()
                nll_ref += float(nn.functional.cross_entropy(a[:-1], row[1:], reduction="sum"))
                nll_exp += float(nn.functional.cross_entropy(b[:-1], row[1:], reduction="sum"))
                agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                tokens += row.numel()
                differs = torch.zeros(row.numel(), dtype=torch.bool)
                for i in reference_blocks:
                    d = (ref_sel.by_layer[i] != exp_sel.by_layer[i]).any(dim=-1)  # (L,)
                    decisions += d.numel()
                    decision_diff += int(d.sum())
                    differs |= d
                token_diff += int(differs.sum())
                for i, router in routers.items():  # the same layer input for both: conversion error only
                    x = ref_sel.inputs[i]
                    router(x.unsqueeze(0).to(next(router.parameters()).dtype))
                    isolated_diff += int((ref_sel.by_layer[i] != exp_sel.by_layer[i]).any(dim=-1).sum())
        finally:
            for h in handles:
                h.remove()
    progress(ProgressEvent(stage, len(rows), len(rows), "done"))
    predicted = tokens - len(rows)
    return {
        "windows": len(rows),
        "window": int(rows.shape[1]) if len(rows) else 0,
        "tokens": tokens,
        "max_abs_logit_diff": max_abs,
        "mean_abs_logit_diff": sum_abs / max(n_logits, 1),
        "argmax_agreement": agree / max(tokens, 1),
        "selection_diff_fraction": decision_diff / max(decisions, 1),  # of (token, MoE layer) decisions
        "tokens_with_selection_diff": token_diff / max(tokens, 1),  # tokens differing in any layer
        "isolated_selection_diff_fraction": isolated_diff / max(decisions, 1),  # same inputs, router alone
        "perplexity_reference": math.exp(nll_ref / max(predicted, 1)),
        "perplexity_export": math.exp(nll_exp / max(predicted, 1)),
    }
