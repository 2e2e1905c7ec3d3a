"""Optional recovery: top-K distillation of the dense model into the carved one."""

import json

import pytest
import torch
from conftest import tiny_recipe
from tiny import tiny_model

import moecarve
from moecarve.architectures import arch_for
from moecarve.carving import carve_model
from moecarve.checkpoint import load_pretrained
from moecarve.errors import RecipeError
from moecarve.plan import plan
from moecarve.recipe import Recipe, RecoverySpec
from moecarve.recovery import (
    chunk_rows,
    norm_weights,
    rebalance_selection,
    recover,
    teacher_targets,
    topk_distillation_loss,
)


@pytest.mark.unit
def test_topk_loss_with_the_whole_vocabulary_is_the_cross_entropy_to_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(5, 11, generator=g) * 3, torch.randn(5, 11, generator=g)
    lp = torch.log_softmax(teacher, -1)
    top = torch.topk(lp, 11, dim=-1)
    loss = topk_distillation_loss(student, top.indices, top.values)
    expected = -(lp.exp() * torch.log_softmax(student, -1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    # minimised by the teacher itself: its value there is the teacher's entropy, and no gradient
    at_teacher = teacher.clone().requires_grad_(True)
    value = topk_distillation_loss(at_teacher, top.indices, top.values)
    value.backward()
    torch.testing.assert_close(value, -(lp.exp() * lp).sum(-1).mean())
    assert at_teacher.grad.abs().max() < 1e-6
    assert loss > value


@pytest.mark.unit
def test_topk_loss_is_minimised_by_the_teacher_with_the_rest_of_the_vocabulary_as_one_outcome():
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(4, 20, generator=g) * 4
    lp = torch.log_softmax(teacher, -1)
    top = torch.topk(lp, 5, dim=-1)
    student = teacher.clone().requires_grad_(True)
    loss = topk_distillation_loss(student, top.indices, top.values)
    loss.backward()
    assert student.grad.abs().max() < 1e-6  # the teacher is a stationary point
    # value there: the entropy of the teacher coarsened to its 5 tokens + the rest
    p = top.values.exp()
    rest = 1 - p.sum(-1)
    torch.testing.assert_close(loss, -((p * top.values).sum(-1) + rest * rest.log()).mean())
    # a student that puts all its mass on the 5 tokens (in the teacher's proportions) is worse
    peaked = torch.full_like(teacher, -1e4).scatter(-1, top.indices, top.values)
    assert topk_distillation_loss(peaked, top.indices, top.values) > loss + 0.01


@pytest.mark.unit
def test_chunks_cover_each_window_in_order():
    rows = torch.arange(2 * 10).view(2, 10)
    assert chunk_rows(rows, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [10, 11, 12, 13], [14, 15, 16, 17]]
    assert chunk_rows(rows, 64).shape == (2, 10)


@pytest.mark.unit
def test_recipe_shorthand_and_bad_values():
    assert Recipe.parse({"moe": "S1A1E4", "recovery": True}).recovery.enabled
    assert not Recipe.parse({"moe": "S1A1E4"}).recovery.enabled
    for bad in ({"budget_seconds": 0}, {"parameters": "router"}, {"top_k_logits": 0}, {"learning_rate": -1}):
        with pytest.raises(RecipeError, match="recovery"):
            Recipe.parse({"moe": "S1A1E4", "recovery": bad})


def _carved_with_teacher(spec: RecoverySpec):
    """A tiny llama with peaked output distributions, its teacher targets, then carved at S2A1E8."""
    model = tiny_model("llama")
    with torch.no_grad():  # random init: near-uniform logits and FFNs too weak to matter; sharpen both
        model.lm_head.weight.mul_(40)
        for layer in model.model.layers:
            for proj, scale in ((layer.mlp.up_proj, 3), (layer.mlp.gate_proj, 3), (layer.mlp.down_proj, 10)):
                proj.weight.mul_(scale)
    rows = torch.randint(3, 300, (4, 64), generator=torch.Generator().manual_seed(2))
    teacher = teacher_targets(model, rows, spec)
    recipe = Recipe.parse({"model": "tiny", "moe": "S2A1E8", "calibration": {"max_seq_length": 64},
                           "profile": {"sample_tokens": 64}})
    config = model.config.to_dict()
    outcome = carve_model(model, arch_for(config), plan(recipe, config), recipe, rows)
    return model, outcome.blocks, teacher


@pytest.mark.integration
def test_recovery_lowers_the_distillation_loss_and_trains_only_down_projections():
    spec = RecoverySpec(enabled=True, norms=False, max_steps=30, budget_seconds=600, learning_rate=3e-3, chunk_tokens=32,
                        chunks_per_step=2, top_k_logits=16, validation_chunks=2, validate_every=5)
    model, blocks, teacher = _carved_with_teacher(spec)
    assert teacher.chunks.shape == (8, 32) and teacher.top_index.shape == (8, 31, 16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    report = recover(model, blocks, teacher, spec, seed=0)
    assert report.steps == 30 and report.tokens == 30 * 2 * 32
    assert report.validation_loss_after < report.validation_loss_before
    assert report.history[0]["train_loss"] > report.history[-1]["train_loss"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.endswith(("shared_down", "experts_down")) for n in changed)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # selection bias, neuron maps
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    # the kept weights are the best validated ones: recomputing their validation loss agrees
    val_ids = torch.randperm(8, generator=torch.Generator().manual_seed(0))[:2].tolist()
    with torch.no_grad():
        vals = [float(topk_distillation_loss(model(input_ids=teacher.chunks[i : i + 1]).logits[0, :-1],
                                             teacher.top_index[i], teacher.top_logp[i])) for i in val_ids]
    assert sum(vals) / 2 == pytest.approx(report.validation_loss_after, rel=1e-5)


@pytest.mark.integration
def test_recovery_with_norms_trains_down_projections_and_every_norm_scale_only():
    spec = RecoverySpec(enabled=True, norms=True, max_steps=10, budget_seconds=600, learning_rate=3e-3, chunk_tokens=32,
                        chunks_per_step=2, top_k_logits=16, validation_chunks=0)
    model, blocks, teacher = _carved_with_teacher(spec)
    norms = {n for n, p in model.named_parameters() if n.endswith("norm.weight")}
    assert len(norm_weights(model)) == len(norms) == 2 * len(model.model.layers) + 1  # input, post-attention, final
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    report = recover(model, blocks, teacher, spec, seed=0)
    assert report.steps == 10 and report.history[0]["train_loss"] > report.history[-1]["train_loss"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert norms <= changed
    assert all(n in norms or n.endswith(("shared_down", "experts_down")) for n in changed)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


@pytest.mark.integration
def test_rebalance_refits_skewed_selection_biases_and_recover_applies_it():
    spec = RecoverySpec(enabled=True, max_steps=8, learning_rate=3e-3, chunk_tokens=32, top_k_logits=16, validate_every=1)
    model, blocks, teacher = _carved_with_teacher(spec)
    with torch.no_grad():  # every layer sends every token to expert 0
        for block in blocks.values():
            block.selection_bias.zero_()
            block.selection_bias[0] = 1e3
    before, after = rebalance_selection(model, blocks, teacher.chunks[:4])
    E = {b.num_experts for b in blocks.values()}.pop()
    assert before == pytest.approx((E - 1) ** 0.5)  # one expert takes all the load (k = 1)
    assert after < 0.5 * before and all(b.selection_bias[0] < 1e3 for b in blocks.values())
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    biases = {i: b.selection_bias.clone() for i, b in blocks.items()}
    report = recover(model, blocks, teacher, spec, seed=0, rebalance=True)
    assert report.best_step > 0 and len(report.rebalance_load_cv) == 2
    assert any(not torch.equal(b.selection_bias, biases[i]) for i, b in blocks.items())
    assert report.validation_loss_rebalanced == report.validation_loss_rebalanced  # measured, not NaN
    # recovered down projections and norm scales (the default), everything else (routers, up / gate) as carved
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if not n.endswith(("_down", "norm.weight")))


@pytest.mark.integration
def test_recovery_trains_when_called_under_no_grad_and_restores_the_mode():
    spec = RecoverySpec(enabled=True, max_steps=2, chunk_tokens=32, top_k_logits=16, validate_every=1)
    model, blocks, teacher = _carved_with_teacher(spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("experts_down")}
    with torch.no_grad():
        report = recover(model, blocks, teacher, spec, seed=0)
        assert not torch.is_grad_enabled()
    assert report.steps == 2 and len(report.history) == 2
    assert report.best_step == 0 or any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


@pytest.mark.integration
def test_recovery_never_keeps_weights_worse_than_carved():
    """A learning rate far too high: validation gets worse, so the carved weights come back."""
    spec = RecoverySpec(enabled=True, max_steps=4, learning_rate=10.0, chunk_tokens=32, top_k_logits=16,
                        validate_every=1)
    model, blocks, teacher = _carved_with_teacher(spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = recover(model, blocks, teacher, spec, seed=0)
    assert report.best_step == 0 and report.validation_loss_after == report.validation_loss_before
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.integration
def test_carve_with_recovery_reports_it_and_round_trips(llama_dir, calib_file, tmp_path):
    recipe = {**tiny_recipe(llama_dir, calib_file), "recovery": {"enabled": True, "max_steps": 3, "chunk_tokens": 32}}
    result = moecarve.carve(recipe, tmp_path / "out")
    rec = result.evaluation["recovery"]
    assert rec["steps"] == 3 and rec["tokens"] == 3 * 2 * 32 and len(rec["history"]) == 3
    ids = torch.randint(3, 300, (2, 40))
    with torch.no_grad():
        assert torch.equal(result.model(input_ids=ids).logits, load_pretrained(tmp_path / "out")(input_ids=ids).logits)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "briefly distilled" in card and "| recovery | 3 steps on 192 calibration tokens" in card
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert saved["recovery"]["steps"] == 3
