"""Optional short recovery: distil the dense model's next-token distribution into the carved one.

Training-free carving fits every layer to the dense layer's output in isolation; the errors of 30
layers compound. Recovery fits the carved model end to end against the *dense model's* logits on
the calibration text, within a wall-clock budget:

1. Before carving, the dense model scores the calibration text cut into ``chunk_tokens``-long
   chunks; per position only the teacher's ``top_k_logits`` log-probabilities are kept
   (``TeacherTargets``: memory ∝ tokens · K, not tokens · vocabulary); the rest of the vocabulary
   counts as one outcome holding the remaining probability.
2. After carving, AdamW updates the MoE blocks' down projections (``parameters: down``; or every
   expert and shared weight, ``experts``) and, with ``norms``, the scale vectors of every
   normalisation layer (``norm_weights``) to minimise the teacher → student cross-entropy over
   those K + 1 outcomes (``topk_distillation_loss``; forward KL up to the teacher's entropy).
   Routers and partitions stay as carved: the blocks weight selected experts by 1, so the
   selection gets no gradient, and the checkpoint format and native exports are unchanged.
   (A norm before an MoE block scales what its router reads, so trained norms can move
   selections; the bias refit in 4 sees the result.)
3. A few calibration chunks are held back: their loss is measured before training and at regular
   intervals, and the weights with the lowest validation loss are kept (never worse than carved).
4. With ``rebalance`` (the pipeline passes ``router.balance``) the selection biases are refitted
   on the recovered model's routing of a few training chunks (``rebalance_selection``).

The schedule is linear warm-up then cosine decay over the number of steps the budget allows,
estimated from the first step's time and again from the warm-up steps after it; the teacher pass,
the final validation and the bias refit count against the budget.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from moecarve.errors import CancelledError
from moecarve.moe import MoEBlock, recording
from moecarve.progress import CancelFn, ProgressEvent, ProgressFn, never_cancel, no_progress
from moecarve.recipe import RecoverySpec
from routers.balance import fit_selection_bias, load_cv

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
REBALANCE_CHUNKS = 8  # 4096 tokens at 512 per chunk: the carve's profile sample size


@dataclass
class TeacherTargets:
    """The dense model's top-K next-token log-probabilities on calibration chunks."""

    chunks: torch.Tensor  # (N, L) token ids
    top_index: torch.Tensor  # (N, L-1, K) int64: teacher's K most likely next tokens
    top_logp: torch.Tensor  # (N, L-1, K) float32: their log-probabilities
    seconds: float


def chunk_rows(rows: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Cut (W, L) windows into (W·⌊L/c⌋, c) chunks (a window shorter than c stays whole)."""
    W, L = rows.shape
    c = min(chunk_tokens, L)
    n = L // c
    return rows[:, : n * c].reshape(W * n, c)


@torch.no_grad()
def teacher_targets(
    model: nn.Module, rows: torch.Tensor, spec: RecoverySpec, progress: ProgressFn = no_progress
) -> TeacherTargets:
    """Run the (still dense) ``model`` on the calibration chunks and keep its top-K distribution."""
    start = time.perf_counter()
    chunks = chunk_rows(rows, spec.chunk_tokens)
    idx, logp = [], []
    for i, chunk in enumerate(chunks):
        progress(ProgressEvent("teacher", i, len(chunks), f"teacher chunk {i + 1}/{len(chunks)}"))
        logits = model(input_ids=chunk.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(lp, min(spec.top_k_logits, lp.shape[-1]), dim=-1)
        idx.append(top.indices)
        logp.append(top.values)
    return TeacherTargets(chunks, torch.stack(idx), torch.stack(logp), time.perf_counter() - start)


def topk_distillation_loss(logits: torch.Tensor, top_index: torch.Tensor, top_logp: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from the teacher to the student over the teacher's K tokens plus one bucket
    holding the rest of the vocabulary, averaged over positions.

    ``−Σ_{j∈K} p_t(j) log p_s(j) − r_t log r_s`` with ``r = 1 − Σ_{j∈K} p(j)``: the KL divergence of
    the two distributions coarsened to K + 1 outcomes, up to the teacher's entropy. Its minimum is
    the student equal to the teacher on the K tokens and on the rest's total (renormalising over K
    alone would instead push all of the student's mass onto the K tokens). With K = V it is the
    full cross-entropy. Shapes: logits (T, V), top_index / top_logp (T, K).
    """
    student = torch.log_softmax(logits.float(), dim=-1).gather(-1, top_index)
    p = top_logp.exp()
    rest_t = (1 - p.sum(-1)).clamp_min(0)
    rest_s = torch.log((1 - student.exp().sum(-1)).clamp_min(1e-12))
    return -((p * student).sum(-1) + rest_t * rest_s).mean()


def trainable_parameters(blocks: dict[int, MoEBlock], which: str) -> list[nn.Parameter]:
    names = ("shared_down", "experts_down") if which == "down" else (
        "shared_up", "shared_gate", "shared_down", "experts_up", "experts_gate", "experts_down"
    )
    params = []
    for block in blocks.values():
        for name in names:
            p = getattr(block, name)
            if p is not None and p.numel():
                params.append(p)
    return params


def norm_weights(model: nn.Module) -> list[nn.Parameter]:
    """The scale vectors of ``model``'s normalisation layers (any module class named ``*Norm`` with
    a ``weight``: LayerNorm, Llama/Qwen/Gemma RMSNorm, q/k norms); each parameter once."""
    out: dict[int, nn.Parameter] = {}
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(module).__name__.endswith("Norm") and isinstance(w, nn.Parameter):
            out.setdefault(id(w), w)
    return list(out.values())


@dataclass
class RecoveryReport:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    teacher_seconds: float = 0.0
    validation_loss_before: float = float("nan")
    validation_loss_after: float = float("nan")  # of the kept weights
    best_step: int = 0
    # selection biases refitted on the recovered model's routing (mean layer load CV on the
    # rebalancing chunks with the carved biases, then with the refitted ones)
    rebalance_load_cv: list[float] = field(default_factory=list)
    validation_loss_rebalanced: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)  # step, train loss, lr, seconds, validation loss

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _validation_loss(model: nn.Module, teacher: TeacherTargets, ids: list[int]) -> float:
    with torch.no_grad():
        losses = [
            float(topk_distillation_loss(model(input_ids=teacher.chunks[i : i + 1], use_cache=False).logits[0, :-1], teacher.top_index[i], teacher.top_logp[i]))
            for i in ids
        ]
    return sum(losses) / len(losses)


def recover(
    model: nn.Module,
    blocks: dict[int, MoEBlock],
    teacher: TeacherTargets,
    spec: RecoverySpec,
    *,
    seed: int = 0,
    rebalance: bool = False,
    progress: ProgressFn = no_progress,
    should_cancel: CancelFn = never_cancel,
) -> RecoveryReport:
    """Fit the carved ``model``'s expert weights to ``teacher`` within ``spec.budget_seconds``."""
    start = time.perf_counter()
    report = RecoveryReport(teacher_seconds=teacher.seconds)
    params = trainable_parameters(blocks, spec.parameters) + (norm_weights(model) if spec.norms else [])
    n = len(teacher.chunks)
    if not params or n == 0:
        return report
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    n_val = min(spec.validation_chunks, n - 1)
    val_ids, train_ids = order[:n_val], order[n_val:]
    per_step = min(spec.chunks_per_step, len(train_ids))

    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    was_training = model.training
    model.train(False)  # no dropout: the carved model is evaluated as it will run
    grad_mode = torch.is_grad_enabled()
    torch.set_grad_enabled(True)  # callers may run under no_grad; training needs autograd
    try:
        if val_ids:
            report.validation_loss_before = report.validation_loss_after = _validation_loss(model, teacher, val_ids)
        best = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0, betas=(0.9, 0.95))
        budget = spec.budget_seconds - teacher.seconds
        planned = spec.max_steps or 10**9
        share = _validation_share(spec, n_val, per_step)  # validation forwards per step, in steps
        cursor, step = 0, 0
        next_val = spec.validate_every
        train_start = time.perf_counter() - start

        def out_of_time() -> bool:  # would one more step (at the mean step time so far) overrun?
            now = time.perf_counter() - start
            return now >= budget or (step > 0 and now + (now - train_start) / step > budget)

        while step < planned:
            elapsed = time.perf_counter() - start
            if out_of_time():
                break
            if should_cancel():
                raise CancelledError(f"cancelled during recovery, step {step}")
            lr_scale = _schedule(step, planned)
            for group in opt.param_groups:
                group["lr"] = spec.learning_rate * lr_scale
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for _ in range(per_step):
                if cursor == len(train_ids):
                    cursor = 0
                    train_ids = [train_ids[i] for i in torch.randperm(len(train_ids), generator=g).tolist()]
                c = train_ids[cursor]
                cursor += 1
                logits = model(input_ids=teacher.chunks[c : c + 1], use_cache=False).logits[0, :-1]
                loss = topk_distillation_loss(logits, teacher.top_index[c], teacher.top_logp[c]) / per_step
                loss.backward()
                loss_sum += float(loss.detach())
            opt.step()
            step += 1
            report.tokens += per_step * teacher.chunks.shape[1]
            if spec.max_steps is None and step in (1, WARMUP_STEPS):
                # budget → number of steps: from the first step's time, then again when the warm-up
                # ends (the decay has not begun, so the schedule stays smooth) from the mean of
                # the later warm-up steps. The first step carries one-off costs, and once (another
                # process on the cores) a plan made from it alone ended recovery at 189 of 300 s.
                now = time.perf_counter() - start
                if step == 1:
                    step_seconds = max(now - elapsed, 1e-6)
                    first_done = now
                    # reserved, in forwards (≈ 1/3 of a chunk's training pass each): the last
                    # step's validation, and the selection-bias refit with its own validation
                    forwards = n_val + (min(REBALANCE_CHUNKS, len(train_ids)) + n_val if rebalance else 0)
                    budget -= step_seconds * forwards / (3 * per_step)
                    planned = max(2, 1 + int((budget - now) / (step_seconds * (1 + share))))
                elif planned > step:
                    step_seconds = max((now - first_done) / (step - 1), 1e-6)
                    planned = max(step + 1, step + int((budget - now) / (step_seconds * (1 + share))))
            entry = {"step": step, "train_loss": round(loss_sum, 5), "lr": spec.learning_rate * lr_scale,
                     "seconds": round(time.perf_counter() - start, 2)}
            last = step >= planned or out_of_time()
            if val_ids and (step >= next_val or last):
                next_val += spec.validate_every
                val = _validation_loss(model, teacher, val_ids)
                entry["validation_loss"] = round(val, 5)
                if val < report.validation_loss_after:
                    report.validation_loss_after, report.best_step = val, step
                    best = [p.detach().clone() for p in params]
            elif not val_ids:
                report.best_step = step
                best = [p.detach().clone() for p in params]
            report.history.append(entry)
            progress(ProgressEvent("recover", step, planned, f"step {step}/{planned} loss {loss_sum:.4f}"))
            log.debug("recovery %s", entry)
        with torch.no_grad():
            for p, b in zip(params, best, strict=True):
                p.copy_(b)
        if rebalance and report.best_step:
            progress(ProgressEvent("recover", step, step, "refitting selection biases"))
            report.rebalance_load_cv = rebalance_selection(model, blocks, teacher.chunks[train_ids[:REBALANCE_CHUNKS]])
            if val_ids:
                report.validation_loss_rebalanced = _validation_loss(model, teacher, val_ids)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
        torch.set_grad_enabled(grad_mode)
    report.steps = step
    report.seconds = time.perf_counter() - start + teacher.seconds
    progress(ProgressEvent("recover", report.steps, report.steps, "done"))
    return report


class _ScoreTap:
    """MoEBlock recorder keeping the router scores (before the selection bias)."""

    def __init__(self) -> None:
        self.scores: list[torch.Tensor] = []

    def __call__(self, block: MoEBlock, x: torch.Tensor, scores: torch.Tensor, selected: torch.Tensor) -> None:
        self.scores.append(scores.detach())


@torch.no_grad()
def rebalance_selection(model: nn.Module, blocks: dict[int, MoEBlock], chunks: torch.Tensor) -> list[float]:
    """Refit every routed block's selection bias on the model's routing of ``chunks``.

    Recovery changes the residual stream the routers read, so the carve's biases no longer even out
    the load (on SmolLM2 at 25 %: held-out load CV 0.16 → 0.28 mean, 0.30 → 0.50 worst layer). One
    pass records every layer's scores; each bias is refitted as the carve fits it. Returns the mean
    layer load CV on ``chunks`` with the old and the new biases.
    """
    taps = {i: _ScoreTap() for i, b in blocks.items() if 0 < b.num_experts_per_tok < b.num_experts}
    if not taps:
        return []
    with recording(blocks, taps):
        for chunk in chunks:
            model(input_ids=chunk.unsqueeze(0), use_cache=False)
    before, after = [], []
    for i, tap in taps.items():
        block, scores = blocks[i], torch.cat(tap.scores)
        before.append(load_cv(block.select(scores), block.num_experts))
        block.selection_bias.copy_(fit_selection_bias(scores, block.num_experts_per_tok))
        after.append(load_cv(block.select(scores), block.num_experts))
    return [sum(before) / len(before), sum(after) / len(after)]


def _schedule(step: int, total: int) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine decay to 10 % at ``total``."""
    if step < WARMUP_STEPS:
        return (step + 1) / (WARMUP_STEPS + 1)
    t = min(1.0, (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def _validation_share(spec: RecoverySpec, n_val: int, per_step: int) -> float:
    """Validation forwards per training step, in training-step units (a forward ≈ 1/3 of fwd+bwd)."""
    if not n_val:
        return 0.0
    return n_val / (3 * per_step * spec.validate_every)
