"""The contrastive-pairs loss (stage 3 of LLM2Vec): InfoNCE over (query, positive, hard negatives).

Each query must pick its own positive among every positive and every hard negative of the *global*
batch: the cross-entropy of the cosine similarities divided by a temperature, the target being its own
positive. This is the loss of LLM2Vec's supervised stage (``HardNegativeNLLLoss``), E5's and
sentence-transformers' ``MultipleNegativesRankingLoss`` with hard negatives (van den Oord et al., 2018;
Henderson et al., 2017; Wang et al., 2022). ``temperature`` is ``1 / scale``: sentence-transformers'
``scale=20`` is ``temperature=0.05``; LLM2Vec's supervised runs use ``loss_scale=50`` (0.02).

Shapes: ``q [N, D]`` the queries, ``p [N, D]`` their positives (row i belongs to query i), ``n [M, D]``
the hard negatives (usually ``N * k`` for k per query, any M including 0). Which query a negative was
mined for does not matter: every query scores every candidate, ``[N, N + M]`` logits.

Matryoshka (Kusupati et al., 2022; sentence-transformers' ``MatryoshkaLoss``): the same loss is also
computed on the first ``d`` dimensions of every vector (re-normalised, since the cosine does), for each
``d`` in ``matryoshka_dims``, and the total is the plain sum over those dimensions and the full one
(sentence-transformers' default weights, all 1). The accuracy reported is the full dimension's.

Across workers the candidates come from the whole global batch: every worker gathers all queries,
positives and negatives (its own rows keep their gradient; ``gather_keep_local_grad``) and computes the
same global loss. As for SimCSE (``bg2vec.objectives.simcse``), each worker's gradient of its own rows is
then exactly the single-process gradient, and since data-parallel training averages gradients over
workers, the training loop multiplies this loss by the world size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bg2vec.objectives.simcse import gather_keep_local_grad


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy of ranking each query's own positive first) over the candidates ``[p; n]``."""
    candidates = F.normalize(torch.cat([p, n]).float(), dim=-1)
    scores = F.normalize(q.float(), dim=-1) @ candidates.T / temperature  # [N, N + M]
    target = torch.arange(len(q), device=q.device)
    return F.cross_entropy(scores, target), (scores.argmax(-1) == target).float().mean()


def matryoshka_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float,
                    dims: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of :func:`contrastive_loss` on the first ``d`` dimensions for each ``d`` in ``dims`` and
    on all of them (each counted once); the full dimension's accuracy."""
    loss, accuracy = contrastive_loss(q, p, n, temperature)
    for d in sorted(set(dims) - {q.shape[-1]}):
        loss = loss + contrastive_loss(q[:, :d], p[:, :d], n[:, :d], temperature)[0]
    return loss, accuracy


def distributed_contrastive_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float,
                                 dims: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`matryoshka_loss` over the global batch: the same value on every worker (module docstring)."""
    return matryoshka_loss(gather_keep_local_grad(q), gather_keep_local_grad(p), gather_keep_local_grad(n),
                           temperature, dims)
