"""The MNTP optimizer step the training benches time: a plain PyTorch loop's, or one DeepSpeed rank's.

Both return ``step(inputs, labels) -> loss`` that runs forward, the shifted MNTP loss, backward and
the optimizer, and reads the loss as the training loop logs it (which also synchronises a GPU).
``head="scored"`` computes the loss as the training loop does (the LM head only where a masked
token is predicted: bg2vec.objectives.mntp.MaskedNextTokenModel), ``head="full"`` from the model's
full logits (every position, the straightforward computation).
"""

from __future__ import annotations

import contextlib
import os

import torch

from bg2vec._compat import deepspeed_cpu_local_size
from bg2vec.objectives.mntp import MaskedNextTokenModel, mntp_loss_and_accuracy
from bg2vec.training.config import TrainConfig
from bg2vec.training.deepspeed_config import deepspeed_config
from bg2vec.training.model import zero3_fetch_whole_layers


def _adamw(model, cfg: TrainConfig) -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
    """The training loop's optimizer over the trainable (LoRA) parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return trainable, torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                        weight_decay=cfg.optim.weight_decay)


def mntp_forward(model, head: str = "scored"):
    """``forward(module, inputs, labels) -> (loss, accuracy)`` and the module to train (and wrap)."""
    if head == "full":
        return model, lambda module, inputs, labels: mntp_loss_and_accuracy(module(input_ids=inputs).logits, labels)
    if head != "scored":
        raise ValueError(f"head must be scored or full, got {head!r}")
    return MaskedNextTokenModel(model), lambda module, inputs, labels: module(inputs, labels)


def plain_step(model, cfg: TrainConfig, head: str = "scored"):
    trainable, optimizer = _adamw(model, cfg)
    module, forward = mntp_forward(model, head)

    def step(inputs, labels):
        loss, _ = forward(module, inputs, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        return loss.detach()

    return step


def deepspeed_step(model, cfg: TrainConfig, bf16: bool, head: str = "scored"):
    """(engine, step) of the training loop's DeepSpeed engine (ZeRO stage ``cfg.zero_stage``), on the
    process group of :func:`single_rank_process_group`. The engine steps at every micro-batch when
    ``cfg`` has no gradient accumulation, whatever the micro-batch's size."""
    import deepspeed

    if cfg.zero_stage == 3:
        zero3_fetch_whole_layers(model)
    trainable, optimizer = _adamw(model, cfg)
    module, forward = mntp_forward(model, head)
    if cfg.zero_stage == 3 and head == "scored":
        deepspeed.zero.register_external_parameter(module, module.head_weight)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, model_parameters=trainable,
                                      config=deepspeed_config(cfg, bf16=bf16), dist_init_required=False)

    def step(inputs, labels):
        loss, _ = forward(engine, inputs, labels)
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
