"""Architecture knowledge as data, keyed by ``model_type`` (never by substrings of model names).

Each entry says where the decoder layers are, which module of a layer is replaced by the MoE
block, which modules become identities (when the FFN is split over several modules, as in OPT and
BERT), the names of the projections, whether the FFN is gated, how its weights are stored, which
config key names the activation, and which native MoE classes can hold it exactly.
This module is pure Python: planning reads a config dict and never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moecarve.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    layers: str  # dotted path from the CausalLM object to the ModuleList of decoder layers
    replace: str  # module of a layer replaced by the MoE block (its output = FFN output)
    up: str  # up projection (fc1); with ``fused_gate_up`` the fused [gate; up] projection
    down: str  # down projection (fc2)
    gate: str | None = None  # gate projection of a separately-gated FFN
    fused_gate_up: bool = False  # Phi-3: one Linear producing [gate | up]
    conv1d: bool = False  # GPT-2: Conv1D stores weights as (in, out)
    identity: tuple[str, ...] = ()  # modules replaced by nn.Identity after the swap
    act_key: str = "hidden_act"
    d_ff_key: str = "intermediate_size"
    hidden_key: str = "hidden_size"
    layers_key: str = "num_hidden_layers"
    d_ff_default_mult: int | None = None  # GPT-2: n_inner = None means 4 × n_embd
    vocab_key: str = "vocab_size"
    native_exports: tuple[str, ...] = field(default=())
    # The layer output is (terms independent of the FFN) + (down projection output), so a carved
    # layer's output is the dense one minus the dense FFN output plus the MoE output. False where
    # a norm follows the FFN before or after the residual add (Gemma 3, BERT, post-LN OPT).
    additive_ffn: bool = True
    additive_requires: tuple[str, ...] = ()  # config flags that must be true for additive_ffn

    def ffn_is_additive(self, config: dict[str, Any]) -> bool:
        return self.additive_ffn and all(config.get(k, True) for k in self.additive_requires)

    @property
    def gated(self) -> bool:
        return self.gate is not None or self.fused_gate_up

    def d_ff(self, config: dict[str, Any]) -> int:
        value = config.get(self.d_ff_key)
        if value is None and self.d_ff_default_mult is not None:
            value = self.d_ff_default_mult * int(config[self.hidden_key])
        if value is None:
            raise UnsupportedArchitectureError(f"config has no {self.d_ff_key!r}")
        return int(value)

    def hidden(self, config: dict[str, Any]) -> int:
        return int(config[self.hidden_key])

    def num_layers(self, config: dict[str, Any]) -> int:
        return int(config[self.layers_key])

    def activation(self, config: dict[str, Any]) -> str:
        return str(config.get(self.act_key) or "gelu")


def _llama_like(
    model_type: str,
    act_key: str = "hidden_act",
    native: tuple[str, ...] = (),
    additive: bool = True,
) -> ArchSpec:
    return ArchSpec(
        model_type=model_type,
        layers="model.layers",
        replace="mlp",
        gate="mlp.gate_proj",
        up="mlp.up_proj",
        down="mlp.down_proj",
        act_key=act_key,
        native_exports=native,
        additive_ffn=additive,
    )


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        _llama_like("llama", native=("glm4_moe", "qwen2_moe")),
        _llama_like("mistral", native=("glm4_moe", "qwen2_moe")),
        _llama_like("qwen2", native=("glm4_moe", "qwen2_moe")),
        _llama_like("qwen3", native=("glm4_moe",)),  # Qwen2MoeAttention has no q/k norm
        _llama_like("gemma3_text", act_key="hidden_activation", additive=False),
        ArchSpec(
            model_type="phi3",
            layers="model.layers",
            replace="mlp",
            up="mlp.gate_up_proj",
            down="mlp.down_proj",
            fused_gate_up=True,
        ),
        ArchSpec(
            model_type="gpt2",
            layers="transformer.h",
            replace="mlp",
            up="mlp.c_fc",
            down="mlp.c_proj",
            conv1d=True,
            act_key="activation_function",
            d_ff_key="n_inner",
            hidden_key="n_embd",
            layers_key="n_layer",
            d_ff_default_mult=4,
        ),
        ArchSpec(
            model_type="opt",
            layers="model.decoder.layers",
            replace="fc1",
            identity=("activation_fn", "fc2"),
            up="fc1",
            down="fc2",
            act_key="activation_function",
            d_ff_key="ffn_dim",
            additive_requires=("do_layer_norm_before",),
        ),
        ArchSpec(
            model_type="bert",
            layers="bert.encoder.layer",
            replace="intermediate",
            identity=("output.dense",),
            up="intermediate.dense",
            down="output.dense",
            additive_ffn=False,
        ),
    )
}


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def arch_for(config: dict[str, Any]) -> ArchSpec:
    model_type = config.get("model_type")
    spec = ARCHITECTURES.get(str(model_type))
    if spec is None:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}. "
            "Add an ArchSpec entry in moecarve/architectures.py to support it."
        )
    return spec
