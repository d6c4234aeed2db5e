"""Dropout for SimCSE's two views: on attention probabilities and on every sublayer's output.

Hidden dropout is BERT's (and so SimCSE's, Gao et al. 2021): on the output of each attention and MLP
block, before it is added to the residual stream, never on the residual stream itself. Dropping the
stream (every layer's output) erases, at every layer, some of the few huge activations pretrained
decoders carry there: on Gemma-3-270M, p = 0.1 that way left two views of a paragraph no closer to
each other than to other paragraphs (cosine 0.68 vs 0.65; pairing accuracy at chance), so SimCSE had
nothing to learn from. On the sublayer outputs, and with attention dropout, the views stay paired.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from bg2vec.modeling.bidirectional import family_of


def set_dropout(model: nn.Module, attention: float, hidden: float) -> nn.Module:
    """Attention dropout through the models' own ``attention_dropout``; hidden dropout on the output
    of every decoder layer's attention and MLP block (forward hooks: the decoders have no such dropout
    of their own). Active in ``train()`` mode only; calling again replaces the previous settings."""
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
        for block in _sublayers(model):
            block._bg2vec_dropout_hook = block.register_forward_hook(_hidden_dropout(hidden))
    return model


def _sublayers(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's attention and MLP blocks (``self_attn``, ``mlp`` in every supported family)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    return [getattr(layer, name) for layer in layers for name in ("self_attn", "mlp")]


def _hidden_dropout(p: float):
    def hook(module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, training=True), *output[1:])
        return F.dropout(output, p, training=True)

    return hook
