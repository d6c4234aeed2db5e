"""The MNTP optimizer step the training benches time: a plain PyTorch loop's, or one DeepSpeed rank's.

Both return ``step(inputs, labels) -> loss`` that runs forward, the shifted MNTP loss, backward and
the optimizer, and reads the loss as the training loop logs it (which also synchronises a GPU).
"""

from __future__ import annotations

import contextlib
import os

import torch

from bg2vec._compat import deepspeed_cpu_local_size
from bg2vec.objectives.mntp import mntp_loss_and_accuracy
from bg2vec.training.config import TrainConfig
from bg2vec.training.deepspeed_config import deepspeed_config
from bg2vec.training.model import zero3_fetch_whole_layers


def _adamw(model, cfg: TrainConfig) -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
    """The training loop's optimizer over the trainable (LoRA) parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return trainable, torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                        weight_decay=cfg.optim.weight_decay)


def plain_step(model, cfg: TrainConfig):
    trainable, optimizer = _adamw(model, cfg)

    def step(inputs, labels):
        loss, _ = mntp_loss_and_accuracy(model(input_ids=inputs).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        return loss.detach()

    return step


def deepspeed_step(model, cfg: TrainConfig, bf16: bool):
    """(engine, step) of the training loop's DeepSpeed engine (ZeRO stage ``cfg.zero_stage``), on the
    process group of :func:`single_rank_process_group`. The engine steps at every micro-batch when
    ``cfg`` has no gradient accumulation, whatever the micro-batch's size."""
    import deepspeed

    if cfg.zero_stage == 3:
        zero3_fetch_whole_layers(model)
    trainable, optimizer = _adamw(model, cfg)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=trainable,
                                      config=deepspeed_config(cfg, bf16=bf16), dist_init_required=False)

    def step(inputs, labels):
        loss, _ = mntp_loss_and_accuracy(engine(input_ids=inputs).logits, labels)
        engine.backward(loss)
        engine.step()
        loss.item()
        return loss.detach()

    return engine, step


@contextlib.contextmanager
def single_rank_process_group(backend: str):
    """DeepSpeed without Ray needs a 1-process group, as each Ray Train worker has (gloo on CPU,
    nccl on a GPU)."""
    import deepspeed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29511", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    if backend == "gloo":
        deepspeed_cpu_local_size(1)
    deepspeed.init_distributed(dist_backend=backend)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
