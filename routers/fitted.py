"""``fitted``: a linear router fitted in seconds to rank experts by their true contribution.

Target: for each token of the router context (every calibration token when the carve kept their
activations, else the profile's sample), each routed expert's *gain* — how much adding it to the
shared output lowers the squared error against the dense FFN output (``RouterContext.expert_gain``),
standardised per token so every token's ranking counts equally. Two stages:
1. ridge least squares x → standardised gains (closed form);
2. within ``budget_seconds``: Adam on a listwise loss (softmax cross-entropy towards each token's
   oracle top-k), early-stopped on a held-out slice by the share of oracle gain the top-k keeps.
The result is a plain linear router with a bias (exportable: the bias folds into the selection
bias, as only the ranking matters under unit weights).

Options: ``target`` ("gain" | "norm"), ``ridge`` (relative, default 1e-3), ``budget_seconds``
(default 0 = least squares only: on SmolLM2 layer probes the listwise stage changed held-out
FFN error by < 0.1 %, so it is opt-in), ``max_steps`` (default 300), ``lr`` (default 1e-3),
``holdout`` (default 0.2).
"""

from __future__ import annotations

import time

import torch

from routers.base import RouterContext
from routers.linear import LinearRouter


def captured_gain(scores: torch.Tensor, gain: torch.Tensor, k: int) -> float:
    """Share of the oracle top-k gain that the top-k of ``scores`` keeps: (S, E), (S, E) → float."""
    chosen = gain.gather(1, torch.topk(scores, k, dim=1).indices).sum()
    best = torch.topk(gain, k, dim=1).values.sum()
    return float(chosen / best.clamp_min(1e-12))


def least_squares(x: torch.Tensor, z: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge fit z ≈ x Wᵀ + b: (S, d), (S, E) → W (E, d), b (E,)."""
    mu = x.mean(0, dtype=torch.float64).float()
    xc = x - mu  # fp32 products (the centring keeps them well scaled), fp64 solve
    gram = (xc.T @ xc).double()
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    w = torch.linalg.solve(gram, (xc.T @ (z - z.mean(0))).double()).float()  # (d, E)
    return w.T.contiguous(), z.mean(0) - mu @ w


def refine(
    router: LinearRouter, x: torch.Tensor, gain: torch.Tensor, k: int, budget: float, max_steps: int, lr: float, holdout: float, seed: int
) -> None:
    """Listwise fine-tune of ``router`` within ``budget`` seconds, keeping the best held-out state."""
    S = x.shape[0]
    perm = torch.randperm(S, generator=torch.Generator().manual_seed(seed))
    n_val = int(S * holdout)
    val, fit = perm[:n_val], perm[n_val:]
    target = torch.zeros_like(gain).scatter_(1, torch.topk(gain, k, dim=1).indices, 1.0 / k)
    w = router.weight.detach().clone().requires_grad_(True)
    b = router.bias.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)
    best = captured_gain(x[val] @ w.detach().T + b.detach(), gain[val], k) if n_val else -1.0
    best_state = (w.detach().clone(), b.detach().clone())
    start = time.perf_counter()
    for step in range(max_steps):
        if time.perf_counter() - start > budget:
            break
        with torch.enable_grad():
            logits = x[fit] @ w.T + b
            loss = -(target[fit] * torch.log_softmax(logits, dim=1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if n_val and step % 10 == 9:
            score = captured_gain(x[val] @ w.detach().T + b.detach(), gain[val], k)
            if score > best:
                best, best_state = score, (w.detach().clone(), b.detach().clone())
    if not n_val:
        best_state = (w.detach(), b.detach())
    with torch.no_grad():
        router.weight.copy_(best_state[0])
        router.bias.copy_(best_state[1])


def build(ctx: RouterContext) -> LinearRouter:
    opts = ctx.options
    x = ctx.x.float()
    gain = ctx.expert_gain() if opts.get("target", "gain") == "gain" else ctx.expert_contribution()
    z = (gain - gain.mean(1, keepdim=True)) / gain.std(1, keepdim=True).clamp_min(1e-12)
    router = LinearRouter(x.shape[1], ctx.num_experts, bias=True)
    w, b = least_squares(x, z, float(opts.get("ridge", 1e-3)))
    with torch.no_grad():
        router.weight.copy_(w)
        router.bias.copy_(b)
    budget = float(opts.get("budget_seconds", 0.0))
    if budget > 0 and ctx.num_experts_per_tok < ctx.num_experts:
        refine(
            router, x, gain, ctx.num_experts_per_tok, budget, int(opts.get("max_steps", 300)),
            float(opts.get("lr", 1e-3)), float(opts.get("holdout", 0.2)), ctx.seed,
        )
    return router
