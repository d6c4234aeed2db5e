"""Unsupervised SimCSE (Gao et al., 2021), stage 2 of LLM2Vec.

The same batch is encoded twice with dropout on: the two views of text i are the positive pair,
every other text of the batch a negative. The loss is the cross-entropy of the cosine
similarities divided by a temperature: ``temperature=0.05`` is sentence-transformers'
``MultipleNegativesRankingLoss`` with ``scale=20`` (scale = 1 / temperature), as in the reference runs.

Across workers the negatives come from the whole global batch: every worker gathers all views
(its own slice keeps its gradient) and computes the same full-batch loss. Each worker's gradient
of its own rows is then exactly the single-process gradient of that loss; data-parallel training
*averages* gradients over workers, so the training loop multiplies the loss by the world size to
recover the full-batch gradient exactly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def simcse_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b [N, D]: two views of N texts -> (loss, accuracy of finding each text's own view)."""
    scores = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature  # [N, N]
    target = torch.arange(len(a), device=a.device)
    return F.cross_entropy(scores, target), (scores.argmax(-1) == target).float().mean()


def gather_keep_local_grad(x: torch.Tensor) -> torch.Tensor:
    """All workers' rows [sum(n_w), D]; this worker's slice is ``x`` itself, so gradients reach it.

    Workers may hold different numbers of rows (the last batch of an epoch).
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    parts = [part[: int(size.item())] for part, size in zip(parts, sizes)]
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def distributed_simcse_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCSE over the global batch: the same value on every worker (see the module docstring)."""
    return simcse_loss(gather_keep_local_grad(a), gather_keep_local_grad(b), temperature)
