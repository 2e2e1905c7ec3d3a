"""Tiny random models (one per supported family) and a tiny byte-level BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from moecarve.calibration import embedded_text

VOCAB = 320
HIDDEN = 32
D_FF = 64
LAYERS = 2

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "gpt2", "opt", "bert"]

_COMMON = dict(
    vocab_size=VOCAB,
    num_hidden_layers=LAYERS,
    hidden_size=HIDDEN,
    intermediate_size=D_FF,
    num_attention_heads=4,
    max_position_embeddings=512,
)

CONFIGS: dict[str, dict] = {
    "llama": dict(_COMMON, num_key_value_heads=2),
    "mistral": dict(_COMMON, num_key_value_heads=2, sliding_window=None),
    "qwen2": dict(_COMMON, num_key_value_heads=2),
    "qwen3": dict(_COMMON, num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(
        _COMMON,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "phi3": dict(_COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "gpt2": dict(
        vocab_size=VOCAB,
        n_layer=LAYERS,
        n_embd=HIDDEN,
        n_inner=D_FF,
        n_head=4,
        n_positions=512,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "opt": dict(
        vocab_size=VOCAB,
        num_hidden_layers=LAYERS,
        hidden_size=HIDDEN,
        ffn_dim=D_FF,
        num_attention_heads=4,
        max_position_embeddings=512,
        word_embed_proj_dim=HIDDEN,
        enable_bias=True,
        pad_token_id=1,
    ),
    "bert": dict(_COMMON, is_decoder=True, type_vocab_size=1),
}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([embedded_text("calibration")[:200_000]], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **CONFIGS[family])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # Random init of biases is often zero; give them values so bias handling is really tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "norm" not in name.lower() and "ln" not in name.lower():
                p.normal_(0, 0.02)
    return model


def save_tiny(family: str, path: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    model = tiny_model(family, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
