"""Dropout for SimCSE's two views: on attention probabilities and on every layer's hidden states."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from bg2vec.modeling.bidirectional import family_of


def set_dropout(model: nn.Module, attention: float, hidden: float) -> nn.Module:
    """Attention dropout through the models' own ``attention_dropout``; hidden-state dropout on the
    output of every decoder layer (a forward hook: the decoders have no residual dropout of their
    own). Active in ``train()`` mode only; calling again replaces the previous settings."""
    family_of(model)
    model.config.get_text_config().attention_dropout = attention
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = attention
        handle = getattr(module, "_bg2vec_dropout_hook", None)
        if handle is not None:
            handle.remove()
            del module._bg2vec_dropout_hook
    if hidden > 0:
        for layer in _decoder_layers(model):
            layer._bg2vec_dropout_hook = layer.register_forward_hook(_hidden_dropout(hidden))
    return model


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def _hidden_dropout(p: float):
    def hook(module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, training=True), *output[1:])
        return F.dropout(output, p, training=True)

    return hook
