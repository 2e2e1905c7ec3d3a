"""Cheap corrections of a carved block, fitted on calibration tokens (pure tensor math).

``refit_down``: once the router's choices are fixed, re-solve the down projections of the shared
and routed experts by ridge least squares so that shared + selected experts reproduce the dense
FFN output on the calibration tokens:

    min_W  Σ_t ‖y_t − W (m_t ⊙ h_t)‖² + λ ‖W − W_0‖²

where ``h_t`` are all neuron activations, ``m_t`` masks the neurons of unselected experts and
``W_0`` is the dense down projection (the ridge pulls towards it, so with no skipped experts the
solution is ``W_0``). The active neurons thus learn to carry the expected part of the skipped
ones that correlates with them — the "expected contribution of skipped experts" and per-expert
output scales, in one closed-form solve. It only changes down-projection weights, so every
export format can represent it. Cost: one (n × n) Gram matrix per layer (only its upper block
triangle is multiplied out: ~5/8 of a full product's work); above ``max_joint`` neurons the solve
is block-diagonal (shared expert and each routed expert on their own).
"""

from __future__ import annotations

import torch

from moecarve.ffn import FFNWeights
from moecarve.moe import MoEBlock


def block_order(block: MoEBlock) -> torch.Tensor:
    """Dense neuron index of each block neuron: shared first, then experts in order: (n,)."""
    return torch.cat([block.shared_neurons, block.expert_neurons.reshape(-1)])


def active_mask(block: MoEBlock, x: torch.Tensor, selected: torch.Tensor | None = None) -> torch.Tensor:
    """(T, n) 1 for the neurons each token computes (block order); ``selected`` (T, k): the
    block's routing of ``x`` when the caller has it."""
    T = x.shape[0]
    chosen = torch.zeros(T, block.num_experts, dtype=x.dtype)
    if block.num_experts:
        chosen.scatter_(1, block.select(block.scores(x)) if selected is None else selected, 1.0)
    routed = chosen.repeat_interleave(block.expert_size, dim=1)  # (T, E·m)
    return torch.cat([torch.ones(T, block.shared_size, dtype=x.dtype), routed], dim=1)


def masked_activations(block: MoEBlock, h: torch.Tensor, x: torch.Tensor, selected: torch.Tensor | None = None) -> torch.Tensor:
    """``h * active_mask(block, x, selected)`` for block-order activations ``h`` (T, n), fp32,
    without materialising the (T, n) mask: a copy whose unselected experts' columns are zeroed."""
    T, E, m = h.shape[0], block.num_experts, block.expert_size
    hm = h.to(torch.float32, copy=True)
    if E:
        chosen = torch.zeros(T, E, dtype=hm.dtype)
        chosen.scatter_(1, block.select(block.scores(x)) if selected is None else selected, 1.0)
        hm[:, block.shared_size :].view(T, E, m).mul_(chosen.unsqueeze(-1))
    return hm


def gram_upper(a: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """Upper block triangle of ``aᵀa`` for ``a`` (T, n) in fp64 (fp32 products); zero below.

    Row band i of the Gram is ``a[:, band_i]ᵀ a[:, band_i.start:]``: ``parts`` large products
    that skip the blocks below the diagonal. (BLAS ``syrk`` does half the work, but SciPy's
    OpenBLAS threads then compete with torch's for the same cores and the whole refit got slower.)
    """
    n = a.shape[1]
    out = torch.zeros(n, n, dtype=torch.float64)
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        if hi > lo:
            out[lo:hi, lo:] = (a[:, lo:hi].T @ a[:, lo:]).double()
    return out.triu()


def symmetric(upper: torch.Tensor) -> torch.Tensor:
    return upper + upper.T - torch.diag(upper.diagonal())


def groups(block: MoEBlock) -> list[slice]:
    s, m = block.shared_size, block.expert_size
    out = [slice(0, s)] if s else []
    return out + [slice(s + e * m, s + (e + 1) * m) for e in range(block.num_experts)]


@torch.no_grad()
def refit_down(
    block: MoEBlock,
    ffn: FFNWeights,
    inputs: list[torch.Tensor],
    ridge: float = 0.05,
    max_joint: int = 8192,
    targets: list[torch.Tensor] | None = None,
    activations: list[torch.Tensor] | None = None,
    selections: list[torch.Tensor] | None = None,
    block_order_activations: bool = False,
) -> None:
    """Refit ``block``'s down projections in place on FFN ``inputs`` (each (T, d)).

    ``targets`` (each (T, d), without the down bias) default to the dense FFN's output on
    ``inputs``; the carving loop passes the outputs it already has, or the dense *model's*
    residual (see ``carving``). ``activations`` (each (T, n)) are the dense FFN's neuron
    activations on ``inputs`` when the caller kept them (dense neuron order, or block order with
    ``block_order_activations``); recomputed otherwise. ``selections`` (each (T, k)): the block's
    routing of ``inputs`` when the caller has it.

    The Gram matrix is a dense product of the masked activations even though each token computes
    only the shared expert and k routed ones: built per expert from the tokens that chose it, it
    has ~2.5× fewer multiply-adds at S56A8E128, but 12-neuron experts make those skinny,
    memory-bound products and it measured 1.2–1.5× slower on 2 cores (25 / 50 / 75 % shapes).
    """
    order = block_order(block)
    act = ffn.act_fn()
    w0 = ffn.down.double()[:, order]  # (d, n)
    n = order.numel()
    joint = n <= max_joint
    gram = torch.zeros(n, n, dtype=torch.float64) if joint else None
    grams = [torch.zeros(g.stop - g.start, g.stop - g.start, dtype=torch.float64) for g in groups(block)]
    cross = torch.zeros(n, w0.shape[0], dtype=torch.float64)
    for j, x in enumerate(inputs):
        x = x.reshape(-1, x.shape[-1]).float()
        if activations is None:
            h = ffn.hidden(x, act)[:, order]
        else:
            h = activations[j].reshape(x.shape[0], -1).float()
            h = h if block_order_activations else h[:, order]  # (T, n); fp32 products per row block, fp64 sums across blocks
        y = h @ w0.T.float() if targets is None else targets[j].reshape(x.shape).float()  # (T, d)
        hm = masked_activations(block, h, x, None if selections is None else selections[j])
        if joint:
            gram += gram_upper(hm)
        else:
            for g, sl in zip(grams, groups(block), strict=True):
                g += gram_upper(hm[:, sl])
        cross += (hm.T @ y).double()
    if joint:
        gram = symmetric(gram)
    else:
        grams = [symmetric(g) for g in grams]
    w = torch.empty_like(w0.T)  # (n, d)
    blocks = [(slice(0, n), gram)] if joint else list(zip(groups(block), grams, strict=True))
    for sl, g in blocks:
        lam = ridge * g.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(g.shape[0], dtype=g.dtype)
        w[sl] = torch.linalg.solve(g + lam * eye, cross[sl] + lam * w0.T[sl])
    s, m, E = block.shared_size, block.expert_size, block.num_experts
    new = w.T.to(block.experts_down.dtype)  # (d, n)
    block.shared_down.copy_(new[:, :s])
    block.experts_down.copy_(new[:, s:].reshape(-1, E, m).permute(1, 0, 2))
