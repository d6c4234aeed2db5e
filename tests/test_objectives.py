"""MNTP and SimCSE against hand computations, and SimCSE across two real gloo workers."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from bg2vec.objectives.mntp import IGNORE, MNTPMasker, mntp_loss_and_accuracy
from bg2vec.objectives.simcse import distributed_simcse_loss, simcse_loss


def log_softmax(row: list[float], k: int) -> float:
    return row[k] - math.log(sum(math.exp(v) for v in row))


def test_mntp_loss_and_accuracy_use_the_shift():
    rows = [[2.0, 0.5, -1.0], [0.0, 3.0, 0.0], [0.1, 1.0, 0.2], [0.0, 4.0, 0.0]]
    logits = torch.tensor([rows])
    labels = torch.tensor([[IGNORE, 1, IGNORE, 1]])  # tokens 1 and 3 were masked
    loss, accuracy = mntp_loss_and_accuracy(logits, labels)
    # token 1 is predicted from output 0, token 3 from output 2
    expected = -(log_softmax(rows[0], 1) + log_softmax(rows[2], 1)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert accuracy.item() == 0.5  # argmax of row 0 is 0 (wrong), of row 2 is 1 (right)
    # without the shift (the reference notebook's accuracy) outputs 1 and 3 would be scored instead:
    # accuracy 1.0 and a much lower loss, both wrong
    unshifted = -(log_softmax(rows[1], 1) + log_softmax(rows[3], 1)) / 2
    assert unshifted < loss.item() - 0.5


def masker(strategy="all_mask", ratio=0.8):
    return MNTPMasker(mask_token_id=7, vocab_size=1000, special_ids=(1, 2), mask_ratio=ratio, strategy=strategy)


def test_all_mask_strategy():
    ids = torch.randint(10, 1000, (64, 128))
    ids[:, 0], ids[:, 50], ids[:, 90] = 1, 2, 1  # BOS/EOS inside the block, as packing leaves them
    inputs, labels = masker()(ids, torch.Generator().manual_seed(0))
    chosen = labels != IGNORE
    assert chosen.float().mean().item() == pytest.approx(0.8 * 125 / 128, abs=0.01)
    assert (inputs[chosen] == 7).all() and torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    assert not chosen[:, [0, 50, 90]].any()  # special tokens and position 0 are never masked


def test_bert_strategy_proportions():
    ids = torch.randint(10, 1000, (128, 256))
    inputs, labels = masker("bert", 0.5)(ids, torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    masked = (inputs == 7) & chosen
    kept = (inputs == ids) & chosen
    randomised = chosen & ~masked & ~kept
    n = chosen.sum().item()
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.01)
    assert kept.sum().item() / n == pytest.approx(0.1, abs=0.01)  # (a random draw can equal the original)
    assert randomised.sum().item() / n == pytest.approx(0.1, abs=0.01)


def test_masking_is_reproducible_with_a_seed():
    ids = torch.randint(10, 1000, (4, 32))
    a = masker()(ids, torch.Generator().manual_seed(3))
    b = masker()(ids, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def reference_simcse(a: torch.Tensor, b: torch.Tensor, temperature: float) -> float:
    """Plain loops: cosine similarity, softmax over the batch, mean negative log-likelihood."""
    def cos(x, y):
        return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

    total = 0.0
    for i, x in enumerate(a.tolist()):
        scores = [cos(x, y) / temperature for y in b.tolist()]
        total -= log_softmax(scores, i)
    return total / len(a)


def test_simcse_loss_equals_the_reference():
    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    loss, accuracy = simcse_loss(a, b, temperature=0.05)
    assert loss.item() == pytest.approx(reference_simcse(a, b, 0.05), rel=1e-5)
    loss_same, acc_same = simcse_loss(a, a + 1e-3 * torch.randn(8, 16), temperature=0.05)
    assert acc_same.item() == 1.0 and loss_same.item() < loss.item()


def _worker(rank: int, world: int, init: str, a: torch.Tensor, b: torch.Tensor, sizes: list[int], out: dict):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    local_a = a[rows].clone().requires_grad_()
    local_b = b[rows].clone().requires_grad_()
    loss, accuracy = distributed_simcse_loss(local_a, local_b, temperature=0.1)
    loss.backward()
    # the training set-up: a DDP encoder averages parameter gradients, so the loss is scaled by world
    torch.manual_seed(0)
    encoder = DistributedDataParallel(torch.nn.Linear(16, 8))
    view_loss, _ = distributed_simcse_loss(encoder(a[rows]), encoder(b[rows]), temperature=0.1)
    (view_loss * world).backward()
    out[rank] = {"loss": loss.item(), "accuracy": accuracy.item(), "grad_a": local_a.grad, "grad_b": local_b.grad,
                 "weight_grad": encoder.module.weight.grad.clone()}
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [[4, 4], [3, 5]])
def test_two_workers_equal_one_process_on_the_whole_batch(tmp_path, sizes):
    torch.manual_seed(0)
    a, b = torch.randn(sum(sizes), 16), torch.randn(sum(sizes), 16)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", a, b, sizes, out), nprocs=2)
        out = dict(out)
    whole_a, whole_b = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss, accuracy = simcse_loss(whole_a, whole_b, temperature=0.1)
    loss.backward()
    torch.manual_seed(0)
    encoder = torch.nn.Linear(16, 8)
    simcse_loss(encoder(a), encoder(b), temperature=0.1)[0].backward()
    for rank in (0, 1):
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        assert out[rank]["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert out[rank]["accuracy"] == pytest.approx(accuracy.item())
        torch.testing.assert_close(out[rank]["grad_a"], whole_a.grad[rows], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out[rank]["grad_b"], whole_b.grad[rows], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out[rank]["weight_grad"], encoder.weight.grad, rtol=1e-5, atol=1e-7)


def test_single_process_without_process_group_is_plain_simcse():
    assert not dist.is_initialized()
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert distributed_simcse_loss(a, b, 0.05)[0].item() == simcse_loss(a, b, 0.05)[0].item()
    assert os.environ.get("RANK") is None
