"""Tiny random-weight decoders of every supported family (2 layers, hidden 32).

The CPU-sized presets train these instead of a 7B model, and the tests check every family with
them. Shapes follow each family's real conventions (grouped-query attention, Gemma's head_dim and
soft-capping, sliding-window layers) at a size that runs in milliseconds.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512)
_FAMILY = {
    "mistral": dict(sliding_window=None),
    "llama": dict(),
    "qwen2": dict(),
    "qwen3": dict(head_dim=8),
    # Gemma alternates sliding-window and global layers; a 4-token window makes that visible in tests
    "gemma2": dict(head_dim=8, sliding_window=4, query_pre_attn_scalar=8, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0),
    "gemma3_text": dict(head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                        layer_types=["sliding_attention", "full_attention"]),
}


def tiny_config(model_type: str, vocab_size: int, **overrides) -> PretrainedConfig:
    """A 2-layer config of ``model_type`` (a key of bg2vec.modeling.FAMILIES)."""
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **{**_COMMON, **_FAMILY[model_type], **overrides})
