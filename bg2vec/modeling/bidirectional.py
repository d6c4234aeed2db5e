"""Bidirectional attention for decoder-only LLMs, through transformers' public ``is_causal`` switch.

``make_bidirectional(model)`` makes every token attend to every non-padding token; ``make_causal``
turns it back. Both change the model in place and return it; they accept a base model, a
``*ForCausalLM`` or a peft-wrapped model.

Sliding-window layers (Gemma-2/3, Qwen with sliding windows) keep their window, made symmetric:
a token sees the tokens within ``sliding_window`` on *both* sides, while the global layers see
the whole sequence. That is what transformers and EmbeddingGemma do, it keeps the locality the
model was pre-trained with, and for any input no longer than the window (Gemma-3: 1024, Gemma-2:
4096 tokens; MNTP uses 512 and SimCSE 128) it is full bidirectional attention. Gemma-2's logit
soft-capping is part of its attention function and stays untouched.
"""

from __future__ import annotations

from torch import nn

from bg2vec._compat import require_transformers
from bg2vec.errors import Bg2VecError

# model_type of the (text) config -> the family's name in messages and bg2vec_config.json
FAMILIES = {
    "mistral": "Mistral",
    "llama": "Llama",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma2": "Gemma-2",
    "gemma3_text": "Gemma-3",
}


def family_of(model: nn.Module) -> str:
    """The model_type of a supported decoder (peft wrappers and multimodal Gemma-3 included)."""
    config = getattr(model, "config", None)
    if config is None:
        raise Bg2VecError(f"{type(model).__name__} has no Hugging Face config; expected a transformers model")
    model_type = config.get_text_config().model_type
    if model_type not in FAMILIES:
        raise Bg2VecError(f"{type(model).__name__} (model_type {model_type!r}) is not supported; bidirectional "
                          f"attention is implemented and tested for: {', '.join(FAMILIES.values())}")
    return model_type


def make_bidirectional(model: nn.Module) -> nn.Module:
    """Every token attends to every non-padding token (in place; returns the model)."""
    return _set_causal(model, False)


def make_causal(model: nn.Module) -> nn.Module:
    """Back to the decoder's causal attention (in place; returns the model)."""
    return _set_causal(model, True)


def is_bidirectional(model: nn.Module) -> bool:
    return getattr(model.config.get_text_config(), "is_causal", True) is False


def _set_causal(model: nn.Module, causal: bool) -> nn.Module:
    require_transformers()
    family_of(model)
    # The model's forward reads config.is_causal to build masks and passes it to the attention
    # functions; the modules' own flag is what they fall back to when called directly.
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.is_causal = causal
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = causal
    return model
