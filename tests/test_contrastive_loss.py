"""The contrastive-pairs loss against hand computations, its Matryoshka sum, and two real gloo workers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from bg2vec.objectives.contrastive import contrastive_loss, distributed_contrastive_loss, matryoshka_loss
from bg2vec.objectives.simcse import simcse_loss


def cos(x: list[float], y: list[float]) -> float:
    return sum(a * b for a, b in zip(x, y)) / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))


def reference_loss(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float) -> tuple[float, float]:
    """Plain loops: each query against every positive and every negative, explicit softmax."""
    candidates = p.tolist() + n.tolist()
    total, right = 0.0, 0
    for i, query in enumerate(q.tolist()):
        scores = [cos(query, c) / temperature for c in candidates]
        softmax = [math.exp(s - max(scores)) for s in scores]
        total -= math.log(softmax[i] / sum(softmax))
        right += max(range(len(scores)), key=scores.__getitem__) == i
    return total / len(q), right / len(q)


def test_the_loss_is_the_hand_computation_with_hard_negatives():
    torch.manual_seed(0)
    q, p, n = torch.randn(6, 16), torch.randn(6, 16), torch.randn(12, 16)  # k = 2 negatives per query
    loss, accuracy = contrastive_loss(q, p, n, temperature=0.05)
    expected_loss, expected_accuracy = reference_loss(q, p, n, 0.05)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy.item() == pytest.approx(expected_accuracy)
    # a negative along query 0 takes its positive's first place: query 0's term goes from ~0 to ~log 2
    near = p.clone()
    near[0] = q[0] + 1e-3
    clean, clean_accuracy = contrastive_loss(q, near, n, 0.05)
    trap = torch.cat([n, q[:1] * 2])
    trapped, trapped_accuracy = contrastive_loss(q, near, trap, 0.05)
    assert trapped.item() - clean.item() > 0.9 * math.log(2) / 6
    assert trapped_accuracy.item() == pytest.approx(clean_accuracy.item() - 1 / 6)
    assert trapped.item() == pytest.approx(reference_loss(q, near, trap, 0.05)[0], rel=1e-5)


def test_without_hard_negatives_it_is_the_in_batch_loss():
    torch.manual_seed(1)
    q, p = torch.randn(5, 8), torch.randn(5, 8)
    loss, accuracy = contrastive_loss(q, p, p[:0], temperature=0.1)
    in_batch, in_batch_accuracy = simcse_loss(q, p, temperature=0.1)
    assert loss.item() == pytest.approx(in_batch.item(), rel=1e-6) and accuracy.item() == in_batch_accuracy.item()
    assert loss.item() == pytest.approx(reference_loss(q, p, p[:0], 0.1)[0], rel=1e-5)


def test_matryoshka_is_the_sum_of_the_losses_on_each_leading_dimension():
    torch.manual_seed(2)
    q, p, n = torch.randn(4, 32), torch.randn(4, 32), torch.randn(4, 32)
    loss, accuracy = matryoshka_loss(q, p, n, 0.05, dims=[8, 16])
    by_hand = sum(reference_loss(q[:, :d], p[:, :d], n[:, :d], 0.05)[0] for d in (8, 16, 32))
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert accuracy.item() == pytest.approx(reference_loss(q, p, n, 0.05)[1])  # the full dimension's
    # the full dimension named too is counted once; no dims is the plain loss
    assert matryoshka_loss(q, p, n, 0.05, dims=[8, 16, 32])[0].item() == pytest.approx(loss.item())
    assert matryoshka_loss(q, p, n, 0.05)[0].item() == contrastive_loss(q, p, n, 0.05)[0].item()


def _worker(rank: int, world: int, init: str, q, p, n, sizes: list[int], negative_sizes: list[int], out: dict):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    negatives = slice(sum(negative_sizes[:rank]), sum(negative_sizes[: rank + 1]))
    local = [x.clone().requires_grad_() for x in (q[rows], p[rows], n[negatives])]
    loss, accuracy = distributed_contrastive_loss(*local, temperature=0.1, dims=[4])
    loss.backward()
    # the training set-up: a DDP encoder averages parameter gradients, so the loss is scaled by world
    torch.manual_seed(0)
    encoder = DistributedDataParallel(torch.nn.Linear(16, 8))
    embedded = encoder(torch.cat([q[rows], p[rows], n[negatives]]))
    pair_loss, _ = distributed_contrastive_loss(*embedded.split([len(local[0]), len(local[1]), len(local[2])]),
                                                temperature=0.1, dims=[4])
    (pair_loss * world).backward()
    out[rank] = {"loss": loss.item(), "accuracy": accuracy.item(), "grads": [x.grad for x in local],
                 "weight_grad": encoder.module.weight.grad.clone()}
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("sizes, negative_sizes", [([4, 4], [4, 4]), ([3, 5], [6, 0]), ([2, 3], [0, 0])])
def test_two_workers_equal_one_process_on_the_whole_batch(tmp_path, sizes, negative_sizes):
    """Ranks with different numbers of pairs and of negatives (a rank whose pairs have none; no rank with any)."""
    torch.manual_seed(0)
    q, p, n = torch.randn(sum(sizes), 16), torch.randn(sum(sizes), 16), torch.randn(sum(negative_sizes), 16)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", q, p, n, sizes, negative_sizes, out),
                 nprocs=2)
        out = dict(out)
    whole = [x.clone().requires_grad_() for x in (q, p, n)]
    loss, accuracy = matryoshka_loss(*whole, temperature=0.1, dims=[4])
    loss.backward()
    torch.manual_seed(0)
    encoder = torch.nn.Linear(16, 8)
    matryoshka_loss(encoder(q), encoder(p), encoder(n), temperature=0.1, dims=[4])[0].backward()
    for rank in (0, 1):
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        negatives = slice(sum(negative_sizes[:rank]), sum(negative_sizes[: rank + 1]))
        assert out[rank]["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert out[rank]["accuracy"] == pytest.approx(accuracy.item())
        for mine, theirs in zip(out[rank]["grads"], (whole[0].grad[rows], whole[1].grad[rows],
                                                     whole[2].grad[negatives])):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out[rank]["weight_grad"], encoder.weight.grad, rtol=1e-5, atol=1e-7)
