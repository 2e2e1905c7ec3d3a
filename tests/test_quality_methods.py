"""Carving-quality methods: fitted router, CMoE representative router, down-projection refit."""

import pytest
import torch
from conftest import tiny_recipe

import moecarve
from moecarve.checkpoint import load_pretrained
from moecarve.corrections import active_mask, block_order, gram_upper, refit_down, symmetric
from moecarve.ffn import FFNWeights
from moecarve.moe import MoEBlock
from moecarve.report.tokens import moe_blocks
from routers.base import RouterContext
from routers.fitted import build as build_fitted
from routers.fitted import captured_gain
from routers.linear import LinearRouter


def make_ffn(n: int = 48, d: int = 16, seed: int = 0) -> FFNWeights:
    g = torch.Generator().manual_seed(seed)
    return FFNWeights(up=torch.randn(n, d, generator=g), down=torch.randn(d, n, generator=g),
                      activation="silu", gate=torch.randn(n, d, generator=g))


def make_ctx(ffn: FFNWeights, x: torch.Tensor, E: int = 8, s: int = 8, k: int = 2, **options) -> RouterContext:
    perm = torch.randperm(ffn.num_neurons, generator=torch.Generator().manual_seed(1))
    return RouterContext(
        x=x, h=ffn.hidden(x), up=ffn.up, down=ffn.down, gate=ffn.gate, shared=perm[:s].sort().values,
        experts=perm[s:].view(E, -1), importance=torch.ones(ffn.num_neurons), num_experts_per_tok=k,
        options=options,
    )


@pytest.mark.unit
@pytest.mark.parametrize("rows", [1024, 7])  # one token block / several, the last one partial
def test_expert_gain_is_the_drop_in_squared_error(rows, monkeypatch):
    import routers.base

    monkeypatch.setattr(routers.base, "GAIN_ROWS", rows)
    ffn = make_ffn()
    ctx = make_ctx(ffn, torch.randn(30, 16))
    dense = ctx.h @ ctx.down.t()
    shared = ctx.h[:, ctx.shared] @ ctx.down[:, ctx.shared].t()
    gain = ctx.expert_gain()
    for e in range(ctx.num_experts):
        with_e = shared + ctx.expert_outputs(e)
        want = ((dense - shared) ** 2).sum(1) - ((dense - with_e) ** 2).sum(1)
        torch.testing.assert_close(gain[:, e], want, rtol=2e-3, atol=1e-2)


@pytest.mark.unit
@pytest.mark.parametrize("s", [8, 40])  # fewer / more shared than routed neurons: r from y or from h
def test_expert_gain_from_profiled_dense_outputs_equals_recomputing_them(s):
    """With the dense outputs ``y`` at hand the residual comes from whichever side of
    y = shared + routed is cheaper; the gains must not depend on which."""
    import dataclasses

    ffn = make_ffn()
    ctx = make_ctx(ffn, torch.randn(30, 16), E=2 if s == 40 else 8, s=s)
    with_y = dataclasses.replace(ctx, y=ctx.h @ ctx.down.t(), cache={})
    torch.testing.assert_close(with_y.expert_gain(), ctx.expert_gain(), rtol=1e-4, atol=1e-3)
    dense = ctx.h @ ctx.down.t()
    r = dense - ctx.h[:, ctx.shared] @ ctx.down[:, ctx.shared].t()
    routed = ctx.routed_neurons
    assert sorted(ctx.experts.reshape(-1).tolist()) == routed.tolist()
    torch.testing.assert_close(with_y.residual_projection(), (r @ ctx.down)[:, routed], rtol=1e-4, atol=1e-3)


@pytest.mark.unit
def test_fitted_router_beats_a_random_one_and_respects_budget():
    ffn = make_ffn()
    x = torch.randn(2000, 16)
    ctx = make_ctx(ffn, x, budget_seconds=0.5)
    gain = ctx.expert_gain()
    fitted = build_fitted(ctx)
    rand = LinearRouter(16, 8)
    rand.weight.data.normal_()
    with torch.no_grad():
        assert captured_gain(fitted(x), gain, 2) > captured_gain(rand(x), gain, 2) + 0.1
    ls_only = build_fitted(make_ctx(ffn, x, budget_seconds=0))
    assert ls_only.bias is not None and torch.isfinite(ls_only.weight).all()


@pytest.mark.unit
def test_refit_down_never_raises_calibration_error_and_keeps_k_equals_e_exact():
    ffn = make_ffn()
    x = torch.randn(500, 16)
    ctx = make_ctx(ffn, x)
    router = build_fitted(make_ctx(ffn, x, budget_seconds=0))
    block = MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, 2, router)
    err = lambda: float(((block(x) - ffn.output(x)) ** 2).sum())  # noqa: E731
    before = err()
    refit_down(block, ffn, [x[:250], x[250:]], ridge=0.05)
    assert err() < before
    mask = active_mask(block, x)
    assert mask.shape == (500, 48) and (mask.sum(1) == 8 + 2 * 5).all()
    assert sorted(block_order(block).tolist()) == list(range(48))
    full = MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, 8, router)
    refit_down(full, ffn, [x], ridge=0.05)  # nothing skipped: the solve returns W_0
    dense = ffn.output(x)  # up to fp32 rounding of the products, amplified by the solve
    assert float((full(x) - dense).abs().max() / dense.abs().max()) < 1e-5


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_from_one_triangle_equals_the_full_product(dtype):
    a = torch.randn(300, 37, dtype=dtype)
    upper = gram_upper(a)
    assert torch.equal(upper, upper.triu())
    torch.testing.assert_close(symmetric(upper), (a.T @ a).double(), rtol=1e-5, atol=1e-4)


@pytest.mark.unit
@pytest.mark.parametrize("max_joint", [8192, 10])  # joint solve and block-diagonal solve
def test_refit_down_with_kept_activations_and_targets_equals_recomputing_them(max_joint):
    """The carving loop hands over the dense pass's activations and outputs instead of recomputing."""
    ffn = make_ffn()
    x = torch.randn(400, 16)
    ctx = make_ctx(ffn, x)
    router = build_fitted(make_ctx(ffn, x, budget_seconds=0))
    a = MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, 2, router)
    b = MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, 2, router)
    chunks = [x[:150], x[150:]]
    refit_down(a, ffn, chunks, ridge=0.05, max_joint=max_joint)
    refit_down(b, ffn, chunks, ridge=0.05, max_joint=max_joint,
               targets=[ffn.output(c) for c in chunks], activations=[ffn.hidden(c) for c in chunks])
    assert not torch.equal(a.experts_down, MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, 2, router).experts_down)
    torch.testing.assert_close(a.experts_down, b.experts_down, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.shared_down, b.shared_down, rtol=1e-5, atol=1e-5)
    # block-order activations and the routing handed over (the carving loop's path): the same
    c = MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, 2, router)
    refit_down(c, ffn, chunks, ridge=0.05, max_joint=max_joint, targets=[ffn.output(x) for x in chunks],
               activations=[ffn.hidden(x)[:, block_order(c)] for x in chunks],
               selections=[c.select(c.scores(x)) for x in chunks], block_order_activations=True)
    torch.testing.assert_close(a.experts_down, c.experts_down, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.shared_down, c.shared_down, rtol=1e-5, atol=1e-5)


@pytest.mark.unit
@pytest.mark.parametrize("k", [2, 8])
def test_output_from_activations_equals_the_forward(k):
    """The carving loop computes the carved FFN output from the dense pass's activations."""
    ffn = make_ffn()
    x = torch.randn(200, 16)
    ctx = make_ctx(ffn, x)
    block = MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, k, build_fitted(make_ctx(ffn, x)))
    h = ffn.hidden(x)[:, block_order(block)]
    out = block.output_from_activations(h, block.select(block.scores(x)))
    torch.testing.assert_close(out, block(x), rtol=1e-4, atol=1e-4)  # fp32 sums in another order
    if k == 8:  # every expert selected: the dense FFN
        torch.testing.assert_close(out, ffn.output(x), rtol=1e-4, atol=1e-4)


def _layer_fixture(n: int = 96, d: int = 16, tokens: int = 1200):
    """A random gated FFN, its calibration tokens (x, h, y) and their streamed profile."""
    from moecarve.profiling import NeuronStats

    ffn = make_ffn(n=n, d=d)
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(2))
    h = ffn.hidden(x)
    y = h @ ffn.down.t()
    stats = NeuronStats(ffn, 4, 512, 0)
    for rows in zip(x.split(400), h.split(400), y.split(400), strict=True):
        stats.update(*rows)
    return ffn, x, h, y, stats.finalize()


@pytest.mark.unit
@pytest.mark.parametrize("rounds", [0, 3])  # with partition refinement the experts move after the router fit
def test_build_hands_back_the_activations_in_the_blocks_neuron_order(rounds):
    """The carve reuses the router's block-order activations for the refit and the carved output."""
    from moecarve.carving import _build
    from moecarve.plan import layer_plan_for
    from moecarve.recipe import Recipe

    ffn, x, h, y, profile = _layer_fixture()
    recipe = Recipe.parse({"model": "smollm2-135m", "moe": "S4A2E16", "partition": {"refine_rounds": rounds}})
    lp = layer_plan_for(0, ffn.num_neurons, 4, 2, 12)
    block, h_block = _build(ffn, profile, lp, recipe, 0, (x, list(h.split(500)), y))
    assert torch.equal(h_block, h[:, block_order(block)])


@pytest.mark.unit
def test_router_fitted_in_block_order_equals_the_dense_order_fit():
    """build_block hands routers the layer permuted into block order; a router is a function of the
    partition, not of how the neurons are numbered."""
    from moecarve.carving import build_block
    from moecarve.plan import layer_plan_for
    from moecarve.recipe import Recipe

    ffn, x, h, y, profile = _layer_fixture()
    recipe = Recipe.parse({"model": "smollm2-135m", "moe": "S4A2E16", "router": {"balance": False}})
    block = build_block(ffn, profile, layer_plan_for(0, ffn.num_neurons, 4, 2, 12), recipe, 0, (x, h, y))
    dense_order = RouterContext(
        x=x, h=h, y=y, up=ffn.up, down=ffn.down, gate=ffn.gate, shared=block.shared_neurons,
        experts=block.expert_neurons, importance=torch.from_numpy(profile.importance).float(), num_experts_per_tok=2,
    )
    want = build_fitted(dense_order)
    torch.testing.assert_close(block.router.weight, want.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(block.router.bias, want.bias, rtol=1e-4, atol=1e-5)


@pytest.mark.unit
def test_masked_activations_zero_exactly_the_unselected_experts():
    from moecarve.corrections import masked_activations

    ffn = make_ffn()
    x = torch.randn(60, 16)
    ctx = make_ctx(ffn, x)
    block = MoEBlock.from_ffn(ffn, ctx.shared, ctx.experts, 2, build_fitted(ctx))
    h = ffn.hidden(x)[:, block_order(block)]
    kept = h.clone()
    assert torch.equal(masked_activations(block, h, x), h * active_mask(block, x))
    assert torch.equal(h, kept)  # the caller's activations are not touched


@pytest.mark.unit
def test_columns_is_a_view_only_for_a_run_of_consecutive_columns():
    from routers.base import columns

    t = torch.randn(5, 10)
    run = columns(t, torch.arange(3, 7))
    assert run.data_ptr() == t[:, 3].data_ptr() and torch.equal(run, t[:, 3:7])
    for index in (torch.tensor([3, 5, 6]), torch.tensor([6, 5]), torch.tensor([2])):
        assert torch.equal(columns(t, index), t[:, index])


@pytest.mark.integration
@pytest.mark.parametrize(
    ("partition", "router", "refit"),
    [("cmoe", "representative", False), ("weight_kmeans", "centroid", False), ("coact", "fitted", True),
     ("random", "fitted", True)],
)
def test_methods_carve_and_round_trip(partition, router, refit, llama_dir, calib_file, tmp_path):
    recipe = {
        **tiny_recipe(llama_dir, calib_file),
        # refinement on a random partition (it has the most to repair) and on coact
        "partition": {"method": partition, "refine_rounds": 3 if router == "fitted" else 0},
        "router": {"method": router, "balance": True, "options": {"budget_seconds": 0.2}},
        "correction": {"refit_down": refit},
    }
    result = moecarve.carve(recipe, tmp_path / "out")
    ids = torch.randint(3, 300, (2, 40))
    with torch.no_grad():
        before = result.model(input_ids=ids).logits
        after = load_pretrained(tmp_path / "out")(input_ids=ids).logits
    assert torch.equal(before, after)
    assert result.evaluation["carved"]["perplexity"] < 1e6
    for block in moe_blocks(result.model).values():  # still a partition of every neuron into equal experts
        neurons = torch.cat([block.shared_neurons, block.expert_neurons.reshape(-1)])
        assert sorted(neurons.tolist()) == list(range(neurons.numel()))
