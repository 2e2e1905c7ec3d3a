"""Layer budgets (sensitivity and adaptive): cost curves, the allocation, and carves that use them."""

import itertools
import json

import pytest
import torch
from conftest import tiny_recipe
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_model

import moecarve
from moecarve.budgets import LayerCost, allocate, cost_curve, importance_curve, taylor_importance
from moecarve.checkpoint import load_pretrained
from moecarve.errors import RecipeError
from moecarve.plan import plan
from moecarve.recipe import Recipe


@pytest.mark.unit
def test_cost_curve_runs_from_everything_missing_to_nothing_missing_and_is_convex():
    h = torch.randn(200, 48) * torch.rand(48) * 3
    down = torch.randn(16, 48)
    curve = torch.tensor(cost_curve(h, down, units=12))
    assert curve.shape == (13,) and curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0, abs=1e-12)
    steps = curve[:-1] - curve[1:]
    assert (steps >= -1e-12).all() and (steps[:-1] - steps[1:] >= -1e-12).all()  # decreasing gains
    # e(a): the share of Σ E[h²]‖w‖² outside the a·4 most important neurons
    imp = (h.double() ** 2).mean(0) * down.double().norm(dim=0) ** 2
    assert curve[3] == pytest.approx(float(1 - imp.sort(descending=True).values[:12].sum() / imp.sum()))


@pytest.mark.unit
def test_importance_curve_sums_what_the_top_units_leave_out():
    imp = torch.rand(48) ** 3
    curve = torch.tensor(importance_curve(imp, units=12), dtype=torch.float64)
    assert curve.shape == (13,) and curve[0] == pytest.approx(float(imp.double().sum())) and curve[-1] == pytest.approx(0, abs=1e-12)
    steps = curve[:-1] - curve[1:]
    assert (steps >= -1e-12).all() and (steps[:-1] - steps[1:] >= -1e-12).all()
    assert curve[5] == pytest.approx(float(imp.double().sort(descending=True).values[20:].sum()))


@pytest.mark.unit
def test_taylor_importance_is_the_squared_first_order_term_of_each_neuron():
    """Σ_t (∂L/∂h_ti · h_ti)², checked through the other side of the down projection:
    ∂L/∂h_t = W_downᵀ ∂L/∂y_t, with y the down projection's output."""
    model = tiny_model("llama")
    ids = torch.randint(3, 300, (2, 24))
    downs = {i: layer.mlp.down_proj for i, layer in enumerate(model.model.layers)}
    got = taylor_importance(model, downs, list(ids))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # no weight gradient, flags kept

    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in downs}

    def keep(i):
        def hook(_m, args, out):
            out.retain_grad()
            seen[i].append((args[0].detach(), out))
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in downs.items()]
    for row in ids:
        logits = model(input_ids=row.unsqueeze(0)).logits[0, :-1]
        torch.nn.functional.cross_entropy(logits, row[1:]).backward()
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    for i, m in downs.items():
        want = sum(((y.grad @ m.weight.detach()) * h).pow(2).reshape(-1, h.shape[-1]).sum(0) for h, y in seen[i])
        assert got[i].shape == (m.in_features,)
        torch.testing.assert_close(got[i].float(), want, rtol=1e-4, atol=1e-12)
        assert (got[i] > 0).all()


def _convex_costs(draw_gains: list[list[float]], weights: list[float]) -> list[LayerCost]:
    costs = []
    for gains, w in zip(draw_gains, weights, strict=True):
        g = sorted(gains, reverse=True)
        total = sum(g) or 1.0
        curve = [1 - sum(g[:a]) / total for a in range(len(g) + 1)]
        costs.append(LayerCost(curve, w))
    return costs


@pytest.mark.unit
@settings(max_examples=40, deadline=None)
@given(
    gains=st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=2, max_size=4),
    weights=st.data(),
)
def test_allocation_is_optimal_against_brute_force(gains, weights):
    w = weights.draw(st.lists(st.floats(0.01, 10), min_size=len(gains), max_size=len(gains)))
    costs = _convex_costs(gains, w)
    lo, hi = [1] * len(costs), [4] * len(costs)
    total = 2 * len(costs)
    alloc = allocate(costs, total, lo, hi)
    assert sum(alloc) == total and all(1 <= a <= 4 for a in alloc)

    def objective(a):
        return sum(c.weight * c.curve[x] for c, x in zip(costs, a, strict=True))

    best = min(objective(a) for a in itertools.product(range(1, 5), repeat=len(costs)) if sum(a) == total)
    assert objective(alloc) == pytest.approx(best, abs=1e-9)


@pytest.mark.unit
def test_allocation_rejects_impossible_totals_and_adaptive_needs_a_fraction():
    costs = _convex_costs([[1, 0.5], [1, 0.5]], [1, 1])
    with pytest.raises(ValueError, match="cannot place"):
        allocate(costs, 5, [1, 1], [2, 2])
    with pytest.raises(RecipeError, match="needs active_fraction"):
        Recipe.parse({"moe": {"num_experts": 6, "num_experts_per_tok": 2, "layer_budgets": "adaptive"}})


@pytest.mark.integration
@pytest.mark.parametrize("rule", ["adaptive", "sensitivity"])
def test_adaptive_carve_keeps_the_total_and_round_trips(llama_dir, calib_file, tmp_path, rule):
    extra = {"sensitivity_tokens": 128} if rule == "sensitivity" else {}  # two 64-token chunks
    recipe = tiny_recipe(llama_dir, calib_file, active_fraction=0.5, layer_budgets=rule, **extra)
    uniform = plan(Recipe.parse(tiny_recipe(llama_dir, calib_file, active_fraction=0.5)))
    result = moecarve.carve(recipe, tmp_path / "out")
    layers = result.plan.layers
    assert sum(lp.active_neurons for lp in layers) == sum(lp.active_neurons for lp in uniform.layers)
    assert result.plan.layout.endswith(f"layer-{rule}")
    saved = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert [lp["active_neurons"] for lp in saved["layers"]] == [lp.active_neurons for lp in layers]
    for lp, layer in zip(layers, result.model.model.layers, strict=True):
        block = layer.mlp
        assert block.shared_size + block.num_experts_per_tok * block.expert_size == lp.active_neurons
    ids = torch.randint(3, 300, (2, 40))
    with torch.no_grad():
        assert torch.equal(result.model(input_ids=ids).logits, load_pretrained(tmp_path / "out")(input_ids=ids).logits)
