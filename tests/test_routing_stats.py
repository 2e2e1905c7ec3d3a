import pytest
import torch
from test_moe_block import make_block

from moecarve.routing_stats import RoutingRecorder

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("k", [1, 2, 6])
def test_recorder_matches_direct_computation(gated, k):
    """Reconstruction error, recall, load and shared share against the block's own outputs."""
    ffn, block = make_block(gated, k=k)
    x = torch.randn(40, 16)
    block.recorder = rec = RoutingRecorder(block.num_experts)
    y = block(x)
    block.recorder = None
    s = rec.summary()
    dense = ffn.output(x).double()
    assert s["reconstruction_error"] == pytest.approx(float(((y.double() - dense) ** 2).sum() / (dense**2).sum()), rel=1e-4, abs=1e-9)
    selected = block.select(block.scores(x))
    load = torch.bincount(selected.flatten(), minlength=6).double()
    assert s["expert_load"] == pytest.approx((load / load.sum()).tolist(), abs=1e-6)
    # recall: Σ|h|·‖W_down col‖ over computed neurons ÷ over all neurons
    h = ffn.hidden(x, ffn.act_fn())
    w = (h.abs() * ffn.down.norm(dim=0)).double()
    active = torch.zeros_like(w, dtype=torch.bool)
    active[:, block.shared_neurons] = True
    for t in range(40):
        active[t, block.expert_neurons[selected[t]].flatten()] = True
    assert s["recall"] == pytest.approx(float(w[active].sum() / w.sum()), rel=1e-5)
    shared = block.shared_output(x).double()
    norms = shared.norm(dim=1).sum() + (y.double() - shared).norm(dim=1).sum()
    assert s["shared_output_share"] == pytest.approx(float(shared.norm(dim=1).sum() / norms), rel=1e-4)
    if k == 6:
        assert s["reconstruction_error"] < 1e-10 and s["recall"] == pytest.approx(1.0)


@pytest.mark.parametrize("gated", [True, False])
def test_recorder_given_activations_equals_recomputing_them(gated):
    """The carving loop passes the profiled activations (block order) instead of recomputing."""
    from moecarve.corrections import block_order

    ffn, block = make_block(gated, k=2)
    x = torch.randn(40, 16)
    scores = block.scores(x)
    selected = block.select(scores)
    a, b = RoutingRecorder(block.num_experts), RoutingRecorder(block.num_experts)
    a(block, x, scores, selected)
    b(block, x, scores, selected, h=ffn.hidden(x, ffn.act_fn())[:, block_order(block)])
    sa, sb = a.summary(), b.summary()
    for key in ("reconstruction_error", "recall", "shared_output_share", "load_cv", "router_entropy"):
        assert sb[key] == pytest.approx(sa[key], rel=1e-4, abs=1e-9), key
