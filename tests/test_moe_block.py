import pytest
import torch

from moecarve.ffn import FFNWeights
from moecarve.moe import MoEBlock
from routers.linear import LinearRouter

pytestmark = pytest.mark.unit


def make_block(
    gated: bool, k: int, E: int = 6, m: int = 4, s: int = 8, d: int = 16, bias: bool = True
):
    torch.manual_seed(0)
    n = s + E * m
    ffn = FFNWeights(
        up=torch.randn(n, d),
        down=torch.randn(d, n),
        activation="silu" if gated else "gelu",
        gate=torch.randn(n, d) if gated else None,
        up_bias=torch.randn(n) if bias else None,
        gate_bias=torch.randn(n) if bias and gated else None,
        down_bias=torch.randn(d) if bias else None,
    )
    perm = torch.randperm(n)
    router = LinearRouter(d, E)
    router.weight.data.normal_()
    return ffn, MoEBlock.from_ffn(ffn, perm[:s].sort().values, perm[s:].view(E, m), k, router)


@pytest.mark.parametrize("gated", [True, False])
def test_k_equals_e_is_the_dense_ffn(gated):
    ffn, block = make_block(gated, k=6)
    x = torch.randn(50, 16)
    torch.testing.assert_close(block(x), ffn.output(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gated", [True, False])
def test_sparse_compute_equals_masked_reference(gated):
    ffn, block = make_block(gated, k=2)
    x = torch.randn(3, 17, 16)
    flat = x.reshape(-1, 16)
    selected = block.select(block.scores(flat))
    mask = torch.zeros(flat.shape[0], 6).scatter_(1, selected, 1.0)  # reference only, in the test
    ref = block.shared_output(flat) + torch.einsum(
        "te,ted->td", mask, block.all_expert_outputs(flat)
    )
    torch.testing.assert_close(block(x), ref.view_as(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gated", [True, False])
def test_grouped_dispatch_gradients_equal_the_masked_reference(gated):
    """Recovery trains through ``routed_output``: its gradients w.r.t. the input and every expert
    weight must be those of the plain per-token sum of the selected experts."""
    _, block = make_block(gated, k=2)
    x = torch.randn(40, 16)  # T·k > E: the grouped path
    selected = block.select(block.scores(x))
    r = torch.randn(40, 16)
    weights = [p for p in (block.experts_up, block.experts_gate, block.experts_down, block.experts_up_bias) if p is not None]
    grads = []
    for grouped in (True, False):
        xg = x.clone().requires_grad_(True)
        for p in weights:
            p.requires_grad_(True)
            p.grad = None
        if grouped:
            y = block.routed_output(xg, selected)
        else:
            mask = torch.zeros(40, 6).scatter_(1, selected, 1.0)  # reference only, in the test
            y = torch.einsum("te,ted->td", mask, block.all_expert_outputs(xg))
        (y * r).sum().backward()
        grads.append([xg.grad] + [p.grad.clone() for p in weights])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_only_selected_experts_are_computed(monkeypatch):
    _, block = make_block(True, k=1)
    x = torch.randn(20, 16)  # T·k = 20 > E = 6: tokens grouped by expert
    chosen = set(block.select(block.scores(x)).flatten().tolist())
    seen: list[tuple[int, int]] = []
    original = block.group_output
    monkeypatch.setattr(
        block, "group_output", lambda xs, e, w: seen.append((e, xs.shape[0])) or original(xs, e, w)
    )
    block(x)
    assert {e for e, _ in seen} == chosen
    assert sum(t for _, t in seen) == 20  # each token went through exactly k = 1 expert


def test_selection_bias_moves_choices():
    _, block = make_block(True, k=1)
    x = torch.randn(40, 16)
    block.selection_bias[3] = 1e6
    assert (block.select(block.scores(x)) == 3).all()


def test_no_shared_expert_and_bad_k():
    ffn, _ = make_block(True, k=2)
    block = MoEBlock.from_ffn(
        ffn, torch.empty(0, dtype=torch.long), torch.arange(32).view(4, 8), 4, LinearRouter(16, 4)
    )
    x = torch.randn(7, 16)
    torch.testing.assert_close(block(x), ffn.output(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="k <= E"):
        MoEBlock.from_ffn(
            ffn,
            torch.empty(0, dtype=torch.long),
            torch.arange(32).view(4, 8),
            5,
            LinearRouter(16, 4),
        )


@pytest.mark.parametrize("gated", [True, False])
def test_decode_path_gathers_only_selected_experts(gated, monkeypatch):
    """T·k ≤ E takes the per-token gather path: same result, only the selected experts' slices."""
    ffn, block = make_block(gated, k=2)
    x = torch.randn(3, 16)  # 3 tokens × k=2 = 6 ≤ E = 6
    selected = block.select(block.scores(x))
    mask = torch.zeros(3, 6).scatter_(1, selected, 1.0)  # reference only, in the test
    ref = block.shared_output(x) + torch.einsum("te,ted->td", mask, block.all_expert_outputs(x))
    gathered: list[torch.Tensor] = []
    original = block.expert_weights
    monkeypatch.setattr(block, "expert_weights", lambda e: gathered.append(e.clone()) or original(e))
    monkeypatch.setattr(block, "group_output", lambda *_: pytest.fail("grouped path used for 3 tokens"))
    out = block(x)
    assert len(gathered) == 1 and torch.equal(gathered[0], selected.reshape(-1))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_decode_path_with_k_equals_e_is_the_dense_ffn():
    ffn, block = make_block(True, k=6)
    x = torch.randn(1, 16)  # 1 × 6 ≤ 6: gather path
    torch.testing.assert_close(block(x), ffn.output(x), rtol=1e-5, atol=1e-5)
