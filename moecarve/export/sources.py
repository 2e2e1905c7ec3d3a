"""Which source architectures a native MoE class can hold exactly, and why the others cannot.

Architecture knowledge as data, keyed by ``model_type`` (``ArchSpec.native_exports`` says which
targets a source may use; the tables here say what its attention looks like and, for refusals,
why). Pure Python: ``plan`` calls ``source_features`` from the config alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moecarve.architectures import arch_for
from moecarve.errors import UnsupportedExportError


@dataclass(frozen=True)
class AttentionSpec:
    """Attention details a native class must reproduce: a bool, or the config key that sets it."""

    qkv_bias: bool | str
    o_bias: bool | str
    qk_norm: bool  # per-head RMSNorm of q and k (Qwen3)


ATTENTION: dict[str, AttentionSpec] = {
    "llama": AttentionSpec(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=False),
    "mistral": AttentionSpec(qkv_bias=False, o_bias=False, qk_norm=False),
    "qwen2": AttentionSpec(qkv_bias=True, o_bias=False, qk_norm=False),
    "qwen3": AttentionSpec(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True),
}

# Why a source has no native export (the reference format holds every architecture exactly).
NOT_NATIVE: dict[str, str] = {
    "gpt2": "GPT-2 has an un-gated GELU MLP with biases, LayerNorm and learned absolute positions; the native "
    "MoE classes have bias-free SwiGLU experts, RMSNorm and rotary positions",
    "opt": "OPT has an un-gated ReLU MLP with biases, LayerNorm and learned absolute positions; the native MoE "
    "classes have bias-free SwiGLU experts, RMSNorm and rotary positions",
    "bert": "BERT is a bidirectional encoder with post-LayerNorm and an un-gated GELU MLP with biases; the native "
    "MoE classes are causal decoders with bias-free SwiGLU experts",
    "gemma3_text": "Gemma 3 scales embeddings by sqrt(hidden_size), uses (1 + weight) RMSNorm with four norms per layer, "
    "q/k norm and interleaved sliding-window attention; no native MoE class computes that",
    "phi3": "moecarve does not yet split Phi-3's fused qkv_proj and gate_up_proj into a native MoE class (its "
    "long-context RoPE variants would also need checking)",
}
PAIR_REASONS: dict[tuple[str, str], str] = {
    ("qwen3", "qwen2_moe"): "Qwen3 normalises q and k per head (q_norm / k_norm), which Qwen2MoeAttention lacks; "
    "export to glm4_moe instead (use_qk_norm)",
}


@dataclass(frozen=True)
class SourceFeatures:
    model_type: str
    qkv_bias: bool
    qk_norm: bool


def _flag(value: bool | str, config: dict[str, Any]) -> bool:
    return bool(config.get(value, False)) if isinstance(value, str) else value


def sliding_window(config: dict[str, Any]) -> int | None:
    """The attention window if it can ever bind (shorter than the context), else None."""
    window = config.get("sliding_window")
    if not window or config.get("use_sliding_window") is False:
        return None
    max_pos = config.get("max_position_embeddings")
    return None if max_pos and int(window) >= int(max_pos) else int(window)


def partial_rotary_factor(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)


def source_features(config: dict[str, Any], target: str) -> SourceFeatures:
    """Check that ``target`` can hold this source architecture exactly; say why not otherwise.

    Raises:
        UnsupportedExportError: with the reason and what to do instead.
    """
    arch = arch_for(config)
    mt = arch.model_type
    fallback = "Keep the reference format (moecarve.load_pretrained), which holds every architecture exactly"
    if target not in arch.native_exports:
        reason = PAIR_REASONS.get((mt, target)) or NOT_NATIVE.get(mt) or "no native mapping is defined for it"
        others = f"; native formats for {mt}: {', '.join(arch.native_exports)}" if arch.native_exports else ""
        raise UnsupportedExportError(f"{target}: cannot export a {mt} model exactly: {reason}. {fallback}{others}.")
    attn = ATTENTION.get(mt)
    problems = []
    if attn is None:
        problems.append(f"moecarve/export/sources.py has no attention entry for {mt}")
    elif _flag(attn.o_bias, config):
        problems.append("its attention output projection has a bias (attention_bias: true), which the native classes lack")
    if not arch.gated:
        problems.append("its FFN is not gated, while native experts are SwiGLU-style (gate, up, down)")
    if config.get("mlp_bias"):
        problems.append("its FFN has biases (mlp_bias: true), which native experts lack")
    window = sliding_window(config)
    if window is not None:
        problems.append(
            f"it uses sliding-window attention (sliding_window: {window} < max_position_embeddings), which the "
            "native classes do not apply; if your contexts never exceed the window, set sliding_window: null in "
            "the source config.json and carve again"
        )
    if partial_rotary_factor(config) != 1.0:
        problems.append("it rotates only part of each head (partial_rotary_factor != 1)")
    if problems:
        raise UnsupportedExportError(f"{target}: cannot export this {mt} model exactly: {'; '.join(problems)}. {fallback}.")
    assert attn is not None
    return SourceFeatures(model_type=mt, qkv_bias=_flag(attn.qkv_bias, config), qk_norm=attn.qk_norm)


def rope_fields(config: dict[str, Any]) -> dict[str, Any]:
    """``rope_parameters`` (transformers v5) plus the legacy ``rope_theta`` / ``rope_scaling`` keys that
    other runtimes (vLLM, llama.cpp converters) still read, all saying the same thing, full rotary."""
    rope = dict(config.get("rope_parameters") or {})
    if not rope:  # a v4-style source config
        rope = dict(config.get("rope_scaling") or {})
        rope["rope_theta"] = config.get("rope_theta", 10000.0)
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope["partial_rotary_factor"] = 1.0
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return {
        "rope_parameters": rope,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None if scaling["rope_type"] == "default" else scaling,
        "partial_rotary_factor": 1.0,
    }


def common_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Fields every native config copies from the (transformers-resolved) source config."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "hidden_act", "rms_norm_eps", "initializer_range", "attention_dropout",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache")
    out = {k: config[k] for k in keys if k in config}
    out["num_key_value_heads"] = config.get("num_key_value_heads") or heads
    out["head_dim"] = config.get("head_dim") or hidden // heads
    return {**out, **rope_fields(config)}
