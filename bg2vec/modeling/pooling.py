"""Pooling token states into one embedding per text.

Every mode reads only the tokens it should: ``mean`` and ``weighted_mean`` average the text's own
tokens (``embed_mask``: no padding, no instruction, no BOS/EOS); ``last`` takes the last real token
(the EOS the encoder appends for this mode) and ``bos`` the first one; both work with left and
right padding.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "weighted_mean", "last", "bos")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, embed_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden [B, L, H], attention_mask and embed_mask [B, L] (1 = use) -> [B, H]."""
    if mode == "mean":
        weights = embed_mask.to(hidden.dtype)
    elif mode == "weighted_mean":  # SGPT's position weights: the k-th text token weighs k
        weights = (embed_mask.long().cumsum(-1) * embed_mask).to(hidden.dtype)
    elif mode in ("last", "bos"):
        positions = torch.arange(attention_mask.shape[1], device=hidden.device).expand_as(attention_mask)
        real = attention_mask.bool()
        index = (torch.where(real, positions, -1).amax(-1) if mode == "last"
                 else torch.where(real, positions, attention_mask.shape[1]).amin(-1))
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    else:
        raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    weights = weights.unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
