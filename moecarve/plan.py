"""``plan(recipe, config)``: feasibility and sizes from the model config alone (no weights).

Fail here, not after an hour of profiling. Pure Python: never imports torch.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from moecarve.architectures import ArchSpec, arch_for
from moecarve.errors import RecipeError
from moecarve.recipe import Recipe


class LayerPlan(BaseModel):
    layer: int
    dense: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    num_shared_experts: int = 0
    expert_size: int = 0  # neurons per routed expert (moe_intermediate_size)
    shared_size: int = 0  # neurons in the shared expert (shared_expert_intermediate_size)
    active_neurons: int


class Plan(BaseModel):
    model: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    gated: bool
    layout: str
    layers: list[LayerPlan]
    active_ffn_fraction: float
    ffn_params: int
    active_ffn_params: int
    router_params: int
    total_params: int  # estimate from the config
    active_params: int  # estimate: total − skipped FFN parameters + routers
    ffn_flops_per_token: int  # 2 × active FFN params + router
    flops_per_token: int  # 2 × active params, excluding attention over the context

    def summary(self) -> str:
        return (
            f"{self.model} ({self.model_type}, {self.num_layers} layers, d_ff={self.intermediate_size}) → "
            f"{self.layout}: active FFN {self.active_ffn_fraction:.1%}, "
            f"active params ≈ {self.active_params / 1e6:.1f}M of {self.total_params / 1e6:.1f}M, "
            f"≈ {self.flops_per_token / 1e6:.1f} MFLOP/token"
        )


def _divisor_hint(d_ff: int, units: int) -> str:
    near = [u for u in range(max(2, units - 16), units + 17) if d_ff % u == 0]
    return f"E + num_shared_experts must divide d_ff={d_ff}; values near {units} that do: {near or 'none'}"


def _layer_plan(recipe: Recipe, index: int, d_ff: int) -> LayerPlan:
    try:
        moe = recipe.layer_moe(index, d_ff)
    except ValueError as e:
        raise RecipeError(f"moe: {e}") from e
    if moe is None:
        return LayerPlan(layer=index, dense=True, active_neurons=d_ff)
    return layer_plan_for(index, d_ff, moe.num_shared_experts, moe.num_experts_per_tok, moe.num_experts)  # type: ignore[arg-type]


def layer_plan_for(index: int, d_ff: int, S: int, k: int, E: int) -> LayerPlan:
    """Sizes of a layer carved as S shared units + top-k of E routed units."""
    units = E + S
    if d_ff % units:
        raise RecipeError(
            f"layer {index}: layout S{S}A{k}E{units} does not fit: {_divisor_hint(d_ff, units)}"
        )
    size = d_ff // units
    return LayerPlan(
        layer=index,
        dense=False,
        num_experts=E,
        num_experts_per_tok=k,
        num_shared_experts=S,
        expert_size=size,
        shared_size=S * size,
        active_neurons=(S + k) * size,
    )


def _attention_and_embedding_params(config: dict[str, Any], arch: ArchSpec) -> tuple[int, int]:
    hidden = arch.hidden(config)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads)
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    vocab = int(config.get(arch.vocab_key) or 0)
    tied = config.get("tie_word_embeddings", True)
    return attn, vocab * hidden * (1 if tied else 2)


def plan(recipe: Recipe, config: dict[str, Any] | None = None, layers: list[LayerPlan] | None = None) -> Plan:
    """Check ``recipe`` against the model config and report sizes, active parameters and FLOPs.

    Args:
        recipe: the carve recipe.
        config: the model's ``config.json`` as a dict; read from ``recipe.model`` when omitted.
        layers: per-layer plans decided elsewhere (layer-adaptive budgets, after profiling);
            by default each layer's layout comes from the recipe. With ``layer_budgets`` other than uniform
            and no ``layers`` the plan shows the uniform layout with the same total.

    Raises:
        UnsupportedArchitectureError: the model type has no architecture entry.
        RecipeError: the layout does not fit the model.
    """
    if config is None:
        from moecarve.sources import load_config

        config = load_config(recipe.model)
    arch = arch_for(config)
    n_layers, hidden, d_ff = arch.num_layers(config), arch.hidden(config), arch.d_ff(config)
    bad = sorted({i for o in recipe.overrides for i in o.layers if not 0 <= i < n_layers})
    if bad:
        raise RecipeError(
            f"overrides: layers {bad} do not exist; the model has layers 0..{n_layers - 1}"
        )
    max_pos = config.get("max_position_embeddings") or config.get("n_positions")
    for name, spec in (
        ("calibration", recipe.calibration.max_seq_length),
        ("evaluation", recipe.evaluation.window),
    ):
        if max_pos and spec and spec > int(max_pos):
            raise RecipeError(
                f"{name}: window {spec} exceeds the model's max_position_embeddings={max_pos}"
            )

    if layers is None:
        layers = [_layer_plan(recipe, i, d_ff) for i in range(n_layers)]
    layout = recipe.moe.resolved(d_ff).layout
    if recipe.moe.layer_budgets != "uniform":
        layout += f" layer-{recipe.moe.layer_budgets}"
    if recipe.export.formats:
        from moecarve.export.checks import check_exports

        check_exports(recipe, config, layers)
    per_neuron = (3 if arch.gated else 2) * hidden
    ffn_params = n_layers * d_ff * per_neuron
    active_ffn = sum(lp.active_neurons for lp in layers) * per_neuron
    router = sum(lp.num_experts * hidden for lp in layers)
    attn, emb = _attention_and_embedding_params(config, arch)
    total = ffn_params + n_layers * attn + emb
    active = total - ffn_params + active_ffn + router
    return Plan(
        model=recipe.model,
        model_type=arch.model_type,
        num_layers=n_layers,
        hidden_size=hidden,
        intermediate_size=d_ff,
        gated=arch.gated,
        layout=layout,
        layers=layers,
        active_ffn_fraction=active_ffn / ffn_params,
        ffn_params=ffn_params,
        active_ffn_params=active_ffn,
        router_params=router,
        total_params=total,
        active_params=active,
        ffn_flops_per_token=2 * (active_ffn + router),
        flops_per_token=2 * active,
    )
