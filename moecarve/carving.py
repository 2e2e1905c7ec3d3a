"""Carve a loaded model layer by layer, in sequence (CMoE's schedule).

For layer ℓ: (1) run the dense layer on each window, streaming FFN inputs into NeuronStats;
(2) partition, build the router, swap in the MoE block; (3) run the *carved* layer to produce
layer ℓ+1's inputs, recording routing statistics. Later layers are thus fitted to what they will
really see. Peak memory ≈ the model + one layer's inputs for the calibration windows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import clustering
import routers
from clustering.base import LayerProfile, PartitionRequest
from clustering.refine import neuron_gains, refine_experts
from moecarve.architectures import ArchSpec
from moecarve.budgets import LayerCost, allocate, cost_curve, importance_curve, taylor_importance
from moecarve.corrections import block_order, refit_down
from moecarve.errors import CancelledError
from moecarve.ffn import FFNWeights, extract_ffn, set_submodule, submodule
from moecarve.layouts import layout_for_units
from moecarve.moe import MoEBlock
from moecarve.plan import LayerPlan, Plan, layer_plan_for, plan
from moecarve.profiling import NeuronStats, profile_summary
from moecarve.progress import CancelFn, ProgressEvent, ProgressFn, never_cancel, no_progress
from moecarve.recipe import Recipe
from moecarve.recovery import chunk_rows
from moecarve.routing_stats import RoutingRecorder
from moecarve.sequential import LayerCalls, capture_layer_calls, ffn_taps, run_layer
from routers.balance import fit_selection_bias
from routers.base import RouterContext

log = logging.getLogger(__name__)

# The router fit and the refit reuse the dense activations the profiling pass computed when one
# layer's worth for all calibration tokens fits in this many bytes (SmolLM2: 100 MB); above it the
# router is fitted on the profile's sample and the refit recomputes them.
KEEP_ACTIVATIONS_BYTES = 2 << 30
# the refit and the carved output take the kept activations in row blocks of at most this size
# (SmolLM2: all 16,384 calibration tokens at once; one product per Gram band is ~30 % faster
# than one per 2048-token window)
REFIT_CHUNK_BYTES = 512 << 20
# layer_budgets "sensitivity": the dense model's loss-gradient pass runs on chunks of this many
# calibration tokens (recipe.moe.sensitivity_tokens of them in all)
SENSITIVITY_CHUNK = 512


@dataclass
class CarveOutcome:
    blocks: dict[int, MoEBlock] = field(default_factory=dict)
    calibration_stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    neuron_stats: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    layer_seconds: dict[int, float] = field(default_factory=dict)
    # the dense down projections (d, n, block order) of the refitted blocks: routing statistics'
    # reference on held-out text (the blocks' own down projections no longer are the dense FFN)
    dense_down: dict[int, torch.Tensor] = field(default_factory=dict)
    plan: Plan | None = None  # the plan carved (differs from the input with layer-adaptive budgets)


def decoder_layers(model: nn.Module, arch: ArchSpec) -> nn.ModuleList:
    return submodule(model, arch.layers)  # type: ignore[return-value]


def install_block(layer: nn.Module, arch: ArchSpec, block: nn.Module) -> None:
    """Swap the layer's FFN for ``block`` (and turn split-FFN leftovers into identities)."""
    set_submodule(layer, arch.replace, block)
    for path in arch.identity:
        set_submodule(layer, path, nn.Identity())


def build_block(
    ffn: FFNWeights,
    profile: LayerProfile,
    lp: LayerPlan,
    recipe: Recipe,
    layer_index: int,
    fit_tokens: tuple[torch.Tensor, torch.Tensor | list[torch.Tensor], torch.Tensor | None] | None = None,
) -> MoEBlock:
    """Partition on the profile, then fit the router on ``fit_tokens`` (FFN inputs (T, d),
    activations (T, n) in dense neuron order, or a list of row blocks of them, and dense outputs
    less the down bias (T, d): every calibration token, when the carve kept them) or else on the
    profile's token sample; the selection bias on the sample."""
    return _build(ffn, profile, lp, recipe, layer_index, fit_tokens)[0]


def _build(
    ffn: FFNWeights,
    profile: LayerProfile,
    lp: LayerPlan,
    recipe: Recipe,
    layer_index: int,
    fit_tokens: tuple[torch.Tensor, torch.Tensor | list[torch.Tensor], torch.Tensor | None] | None,
) -> tuple[MoEBlock, torch.Tensor]:
    """``build_block``, also returning the router's token activations in the block's neuron order
    (T, n). The router sees the layer in block order (shared neurons, then each expert's), so the
    per-expert slices its gains read are views, and the carve reuses the activations for the refit."""
    seed = recipe.seed + layer_index
    request = PartitionRequest(
        num_shared=lp.shared_size,
        num_experts=lp.num_experts,
        expert_size=lp.expert_size,
        num_experts_per_tok=lp.num_experts_per_tok,
        seed=seed,
        options=recipe.partition.options,
    )
    part = clustering.registry.get(recipe.partition.method)(profile, request).validate(ffn.num_neurons, request)
    shared = torch.from_numpy(part.shared.astype(np.int64))
    experts = torch.from_numpy(part.experts.astype(np.int64))
    order = torch.cat([shared, experts.reshape(-1)])
    sample_x = torch.from_numpy(profile.sample_x)
    if fit_tokens is None:
        y = None if profile.sample_y is None else torch.from_numpy(profile.sample_y)
        fit_tokens = (sample_x, torch.from_numpy(profile.sample_h), y)
    x, h, y = fit_tokens
    s = shared.numel()
    ctx = RouterContext(
        x=x,
        h=gather_columns(h if isinstance(h, list) else [h], order),
        y=y,
        up=ffn.up.float()[order],
        down=ffn.down.float()[:, order],
        gate=None if ffn.gate is None else ffn.gate.float()[order],
        shared=torch.arange(s),
        experts=torch.arange(s, order.numel()).view(experts.shape),
        importance=torch.from_numpy(profile.importance).float()[order],
        num_experts_per_tok=lp.num_experts_per_tok,
        seed=seed,
        options=recipe.router.options,
        activation=ffn.activation,
    )
    build_router = routers.registry.get(recipe.router.method)
    router = build_router(ctx)
    rounds = recipe.partition.refine_rounds
    if rounds and 1 <= lp.num_experts_per_tok < lp.num_experts:
        placed, router = _refine(ctx, build_router, recipe.router.balance, rounds, router)
        experts = order[placed]  # block positions → dense neurons
    block = MoEBlock.from_ffn(ffn, shared, experts, lp.num_experts_per_tok, router)
    if recipe.router.balance and lp.num_experts_per_tok < lp.num_experts:
        with torch.no_grad():
            # the sample evens the load as well as every token does (probes: same error and CV)
            block.selection_bias.copy_(fit_selection_bias(block.scores(sample_x), lp.num_experts_per_tok))
    new_order = block_order(block)
    return block, ctx.h if torch.equal(new_order, order) else ctx.h[:, torch.argsort(order)[new_order]]


def gather_columns(blocks: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """``torch.cat(blocks)[:, index]`` in fp32, gathered straight into one (T, len(index)) tensor."""
    blocks = [b.reshape(-1, b.shape[-1]) for b in blocks]
    out = torch.empty(sum(b.shape[0] for b in blocks), index.numel(), dtype=torch.float32)
    row = 0
    for b in blocks:
        torch.index_select(b.float(), 1, index, out=out[row : row + b.shape[0]])
        row += b.shape[0]
    return out


def _refine(ctx: RouterContext, build_router: Any, balance: bool, rounds: int, router: Any) -> tuple[torch.Tensor, Any]:
    """``clustering.refine``: alternate expert re-placement and router re-fits on the router's tokens."""
    k = ctx.num_experts_per_tok
    routed = ctx.routed_neurons
    gains = neuron_gains(ctx.h, ctx.down, ctx.residual_projection(), routed)
    built: dict[int, Any] = {}

    def route(experts: torch.Tensor) -> tuple[torch.Tensor, float]:
        c = dataclasses.replace(ctx, experts=experts)
        r = router if experts is ctx.experts else build_router(c)
        built[id(experts)] = r
        scores = r(c.x).float()
        bias = fit_selection_bias(scores, k) if balance else 0.0
        selected = torch.topk(scores + bias, k, dim=1).indices
        return selected, float(c.expert_gain().gather(1, selected).sum())

    best, best_round = refine_experts(ctx.experts, gains, routed, route, rounds)
    log.debug("partition refinement: kept round %d of %d", best_round, rounds)
    return best, built[id(best)]


@torch.no_grad()
def carve_model(
    model: nn.Module,
    arch: ArchSpec,
    the_plan: Plan,
    recipe: Recipe,
    windows: torch.Tensor,
    progress: ProgressFn = no_progress,
    should_cancel: CancelFn = never_cancel,
) -> CarveOutcome:
    """Replace every non-dense FFN of ``model`` in place; returns blocks and statistics."""
    layers = decoder_layers(model, arch)
    state = capture_layer_calls(model, layers, windows)
    config = model.config.to_dict()
    activation, additive = arch.activation(config), arch.ffn_is_additive(config)
    if recipe.moe.layer_budgets == "adaptive":
        progress(ProgressEvent("carve", 0, len(layers), "layer budgets"))
        the_plan = adaptive_plan(layers, arch, the_plan, recipe, config, state)
    elif recipe.moe.layer_budgets == "sensitivity":
        progress(ProgressEvent("carve", 0, len(layers), "layer budgets (loss sensitivity)"))
        the_plan = sensitivity_plan(model, layers, arch, the_plan, recipe, config, windows)
    outcome = CarveOutcome(plan=the_plan)
    total = len(layers)
    # refit towards the dense model's residual stream: carry the dense path's hidden states too
    reference = [h.clone() for h in state.hidden] if _model_target(recipe, additive) else None
    for i, (layer, lp) in enumerate(zip(layers, the_plan.layers, strict=True)):
        if should_cancel():
            raise CancelledError(f"cancelled before layer {i} of {total}")
        start = time.perf_counter()
        progress(ProgressEvent("carve", i, total, f"layer {i}"))
        calls = state.calls[i]
        reference_out = None if reference is None else [run_layer(layer, h, c) for h, c in zip(reference, calls, strict=True)]
        if lp.dense:
            state.hidden = [run_layer(layer, h, c) for h, c in zip(state.hidden, calls, strict=True)]
            reference = reference_out
            continue
        ffn = extract_ffn(layer, arch, activation)
        stats = NeuronStats(ffn, recipe.profile.marker_top_k, recipe.profile.sample_tokens, recipe.seed + i)
        ffn_io: list[FFNCall] = []
        refit = recipe.correction.refit_down and lp.num_experts_per_tok < lp.num_experts
        keep_h = (refit or additive) and windows.numel() * ffn.num_neurons * 4 <= KEEP_ACTIVATIONS_BYTES
        tap = _profile_tap(stats, ffn_io if additive or refit else None, keep_h)
        with ffn_taps(submodule(layer, arch.replace), submodule(layer, arch.down), tap):
            dense_out = [run_layer(layer, h, c) for h, c in zip(state.hidden, calls, strict=True)]
        profile = stats.finalize()
        every_token = keep_h and recipe.router.fit_tokens == "calibration"
        fit = _fit_tokens(ffn, ffn_io) if every_token else None
        block, h_block = _build(ffn, profile, lp, recipe, i, fit)
        targets = None
        if refit:
            bias = 0 if ffn.down_bias is None else ffn.down_bias
            targets = [c.y - bias for c in ffn_io]  # the dense FFN's output, already computed
            if reference_out is not None:  # FFN output that puts the carved residual on the dense one
                targets = [t + r - o for t, r, o in zip(targets, reference_out, dense_out, strict=True)]
        carved_ffn = None
        if keep_h:  # every neuron's activation is in hand: refit and carved output need no recompute
            x, h = (fit[0], h_block) if fit is not None else _calibration_tokens(block, ffn_io)
            for c in ffn_io:
                c.h = None  # h holds them now, in block order
            k = block.num_experts_per_tok if block.num_experts else 0
            dtype = block.experts_down.dtype  # x and h are fp32; the block runs in the model's dtype
            sel = block.select(block.scores(x.to(dtype))) if k else torch.empty(x.shape[0], 0, dtype=torch.long)
            rows = _row_chunks(x.shape[0], ffn.num_neurons)  # few, large products: the Gram is the refit's cost
            if refit:
                target = torch.cat([t.reshape(-1, t.shape[-1]) for t in targets])  # type: ignore[union-attr]
                refit_down(block, ffn, [x[r] for r in rows], recipe.correction.ridge, targets=[target[r] for r in rows],
                           activations=[h[r] for r in rows], selections=[sel[r] for r in rows],
                           block_order_activations=True)
                del target
            if additive:
                out = torch.cat([block.output_from_activations(h[r].to(dtype), sel[r]) for r in rows])
                sizes = [c.y[..., 0].numel() for c in ffn_io]
                carved_ffn = [o.reshape(c.y.shape).to(c.y.dtype) for o, c in zip(out.split(sizes), ffn_io, strict=True)]
            del x, h, sel, h_block, fit
        elif refit:
            refit_down(block, ffn, [c.x for c in ffn_io], recipe.correction.ridge, targets=targets)
        for c in ffn_io:
            c.h = None  # free before the carved forward
        reference = reference_out
        install_block(layer, arch, block)
        outcome.blocks[i] = block
        outcome.neuron_stats[i] = {
            **profile_summary(profile),
            "shared": block.shared_neurons.tolist(),
            "experts": block.expert_neurons.tolist(),
        }
        dense_down = ffn.down[:, block_order(block)] if refit else None
        if dense_down is not None:
            outcome.dense_down[i] = dense_down
        outcome.calibration_stats[i] = sample_routing_stats(block, profile, dense_down)
        if additive:  # carved output = dense output − dense FFN output + MoE output
            if carved_ffn is None:
                carved_ffn = [block(c.x) for c in ffn_io]
            state.hidden = [o - c.y + f for o, c, f in zip(dense_out, ffn_io, carved_ffn, strict=True)]
        else:
            state.hidden = [run_layer(layer, h, c) for h, c in zip(state.hidden, calls, strict=True)]
        outcome.layer_seconds[i] = time.perf_counter() - start
        log.debug("layer %d carved in %.1fs", i, outcome.layer_seconds[i])
    progress(ProgressEvent("carve", total, total, "done"))
    return outcome


@dataclass
class FFNCall:
    """One calibration window's pass through the dense FFN: input, activations (optional), output."""

    x: torch.Tensor
    y: torch.Tensor
    h: torch.Tensor | None = None


@torch.no_grad()
def adaptive_plan(
    layers: nn.ModuleList, arch: ArchSpec, the_plan: Plan, recipe: Recipe, config: dict[str, Any], state: LayerCalls
) -> Plan:
    """Re-plan the layers that follow the base layout with layer-adaptive budgets (``budgets``),
    from one dense pass of the first calibration window through the still-dense model."""
    activation = arch.activation(config)
    chosen = _budgeted_layers(the_plan, recipe)
    if not chosen:
        return the_plan
    unit_counts = [lp.num_experts + lp.num_shared_experts for lp in chosen]
    units_of = {lp.layer: u for lp, u in zip(chosen, unit_counts, strict=True)}
    costs: dict[int, LayerCost] = {}
    hidden = state.hidden[0]
    for i, layer in enumerate(layers):
        if i not in units_of:
            hidden = run_layer(layer, hidden, state.calls[i][0])
            continue
        ffn = extract_ffn(layer, arch, activation)
        seen: list[FFNCall] = []
        tap = lambda x, h, y, seen=seen: seen.append(FFNCall(x, y, h.reshape(-1, h.shape[-1])))  # noqa: E731
        with ffn_taps(submodule(layer, arch.replace), submodule(layer, arch.down), tap):
            hidden = run_layer(layer, hidden, state.calls[i][0])
        (call,) = seen
        # per token, then averaged: a few tokens with huge residual norms (attention sinks) must not set it
        ratio = call.y.double().pow(2).sum(-1) / hidden.double().pow(2).sum(-1).clamp_min(1e-30)
        costs[i] = LayerCost(cost_curve(call.h, ffn.down, units_of[i]), float(ratio.mean()))
    return _allocated_plan(the_plan, recipe, config, chosen, costs)


def _budgeted_layers(the_plan: Plan, recipe: Recipe) -> list[LayerPlan]:
    """The layers whose layouts layer budgets may change: routed, and not set by ``overrides``."""
    return [lp for lp in the_plan.layers if not lp.dense and not recipe.overridden(lp.layer)]


@torch.no_grad()
def sensitivity_plan(
    model: nn.Module, layers: nn.ModuleList, arch: ArchSpec, the_plan: Plan, recipe: Recipe,
    config: dict[str, Any], windows: torch.Tensor,
) -> Plan:
    """Re-plan with layer budgets from the dense model's loss sensitivity: each layer's cost curve
    sums the Taylor importances (``budgets.taylor_importance``) of the neurons its top units leave
    out, on the first ``recipe.moe.sensitivity_tokens`` calibration tokens in ``SENSITIVITY_CHUNK``-token chunks."""
    chosen = _budgeted_layers(the_plan, recipe)
    if not chosen or windows.shape[1] < 2:  # no next token to score: keep the uniform layout
        return the_plan
    chunks = chunk_rows(windows, SENSITIVITY_CHUNK)
    chunks = chunks[: max(1, recipe.moe.sensitivity_tokens // chunks.shape[1])]
    downs = {lp.layer: submodule(layers[lp.layer], arch.down) for lp in chosen}
    importance = taylor_importance(model, downs, list(chunks))
    costs = {
        lp.layer: LayerCost(importance_curve(importance[lp.layer], lp.num_experts + lp.num_shared_experts), 1.0)
        for lp in chosen
    }
    return _allocated_plan(the_plan, recipe, config, chosen, costs)


def _allocated_plan(
    the_plan: Plan, recipe: Recipe, config: dict[str, Any], chosen: list[LayerPlan], costs: dict[int, LayerCost]
) -> Plan:
    """Same total active units over ``chosen``, each layer between half its uniform count and all
    its units, allocated by ``budgets.allocate``; layouts by the budget-first rule."""
    unit_counts = [lp.num_experts + lp.num_shared_experts for lp in chosen]
    actives = [lp.num_shared_experts + lp.num_experts_per_tok for lp in chosen]
    alloc = allocate(
        [costs[lp.layer] for lp in chosen], sum(actives), [max(2, (a + 1) // 2) for a in actives], unit_counts
    )
    planned = list(the_plan.layers)
    for lp, a, units in zip(chosen, alloc, unit_counts, strict=True):
        lay = layout_for_units(a, units)
        planned[lp.layer] = layer_plan_for(
            lp.layer, the_plan.intermediate_size, lay["num_shared_experts"], lay["num_experts_per_tok"], lay["num_experts"]
        )
    log.info("layer budgets (active units): %s", {lp.layer: a for lp, a in zip(chosen, alloc, strict=True)})
    return plan(recipe, config, planned)


def _kept_tokens(ffn_io: list[FFNCall]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every calibration token's FFN input (T, d) in fp32, and each window's kept activations
    (dense neuron order)."""
    if any(c.h is None for c in ffn_io):
        raise ValueError("every calibration window's activations must have been kept")
    return torch.cat([c.x.reshape(-1, c.x.shape[-1]) for c in ffn_io]).float(), [c.h for c in ffn_io]  # type: ignore[misc]


def _fit_tokens(ffn: FFNWeights, ffn_io: list[FFNCall]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Every calibration token's FFN input (T, d), activations (per window, dense order) and dense
    output less the down bias (T, d), in fp32."""
    x, hs = _kept_tokens(ffn_io)
    y = torch.cat([c.y.reshape(-1, c.y.shape[-1]) for c in ffn_io]).float()
    return x, hs, y if ffn.down_bias is None else y - ffn.down_bias.float()


def _calibration_tokens(block: MoEBlock, ffn_io: list[FFNCall]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every calibration token's FFN input (T, d) and kept activations in block order (T, n)."""
    x, hs = _kept_tokens(ffn_io)
    return x, gather_columns(hs, block_order(block))


def _row_chunks(rows: int, width: int) -> list[slice]:
    """Row ranges of a (rows, width) fp32 matrix, each at most ``REFIT_CHUNK_BYTES`` (≥ 2048 rows)."""
    step = max(2048, REFIT_CHUNK_BYTES // max(4 * width, 1))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def _profile_tap(
    stats: NeuronStats, ffn_io: list[FFNCall] | None, keep_h: bool = False
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """FFN tap: stream (x, h) into ``stats``; keep (x, y[, h]) in ``ffn_io`` when given."""

    def tap(x: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> None:
        stats.update(x, h, y)
        if ffn_io is not None:
            ffn_io.append(FFNCall(x, y, h if keep_h else None))

    return tap


def _model_target(recipe: Recipe, additive: bool) -> bool:
    c = recipe.correction
    if c.refit_down and c.target == "model" and not additive:
        log.warning("correction.target 'model' needs an additive FFN; refitting to the layer output")
    return c.refit_down and c.target == "model" and additive


def sample_routing_stats(
    block: MoEBlock, profile: LayerProfile, reference_down: torch.Tensor | None = None
) -> dict[str, Any]:
    """Routing statistics of the new block on the profile's uniform sample of calibration tokens,
    against the dense FFN (``reference_down``: its down projection in block order, if refit)."""
    recorder = RoutingRecorder(block.num_experts, reference_down)
    if block.num_experts:
        x = torch.from_numpy(profile.sample_x).to(block.experts_up.dtype)
        scores = block.scores(x)
        h = torch.from_numpy(profile.sample_h)[:, block_order(block)]  # profiled: not recomputed
        dense = None if profile.sample_y is None else torch.from_numpy(profile.sample_y)
        recorder(block, x, scores, block.select(scores), h=h, dense=dense)
    return recorder.summary()
