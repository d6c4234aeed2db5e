"""The dev score: continuation retrieval on held-out validation blocks, measured during training.

Each dev block (one of the first ``run.dev_blocks`` blocks of the prepared validation split) is cut
into its first and second half; both are embedded by the model being trained (eval mode,
bidirectional, mean pooling of the final hidden states), and each first half must find its own second
half among the second halves of all dev blocks by cosine similarity. The score is the mean reciprocal
rank of the right half: 1.0 when it always comes first.

It is the objective of the hyperparameter search (``bg2vec.tuning.search``) because it is comparable across
the settings searched, which the losses are not: a higher MNTP mask ratio makes the masked tokens
harder to predict and raises the loss, and the SimCSE loss scales with the temperature. This score
measures the embeddings, the product, with the same task and the same blocks in both stages. Its
reciprocal rank (rather than top-1 accuracy) moves with every rank gained, so early-stopping decisions
between close trials rarely meet ties.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def halves(blocks: torch.Tensor) -> torch.Tensor:
    """Token blocks [B, L] -> their first halves then their second halves [2B, L // 2]."""
    half = blocks.shape[1] // 2
    return torch.cat([blocks[:, :half], blocks[:, half:2 * half]])


def continuation_mrr(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean reciprocal rank of ``second[i]`` among all rows of ``second`` for the query ``first[i]``
    (cosine similarity; a tie with the right half counts in its favour)."""
    similarity = F.normalize(first.double(), dim=-1) @ F.normalize(second.double(), dim=-1).T
    right = similarity.diagonal().unsqueeze(1)
    rank = 1 + (similarity > right).sum(1)
    return float((1.0 / rank).mean())
