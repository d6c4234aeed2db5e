"""``zero_stage: auto``, decided on the workers: there the device memory and the world are known.

The rule is the planner's (:func:`bg2vec.planning.estimate.choose_zero_stage`): plain data parallelism
(ZeRO-0) where every
rank can hold the whole frozen base next to the run's activations, ZeRO-3 where it cannot. It runs
before the weights are loaded, from the model's config alone, since ZeRO-3 must shard while loading.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from bg2vec.planning.estimate import PlanConfig, choose_zero_stage
from bg2vec.planning.shapes import LORA_TARGETS, architecture_of
from bg2vec.training.config import MNTPConfig, TrainConfig

ATTENTION_KINDS = ("sdpa", "flash_attention_2", "eager")


def device_capacity(use_gpu: bool, device: torch.device, local_world: int) -> int:
    """Bytes one rank may use: the smallest GPU of the run, or on CPU the host's memory shared by its ranks."""
    if use_gpu:
        total = torch.tensor([torch.cuda.get_device_properties(device).total_memory], device=device)
    else:
        total = torch.tensor([os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // local_world])
    if dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.MIN)  # every rank must choose the same stage
    return int(total.item())


def plan_config(cfg: TrainConfig, model_config, *, seq_len: int, bf16: bool, world: int, local_world: int,
                use_gpu: bool, config_dir: Path) -> PlanConfig:
    """The planner's view of a training run (``config_dir`` receives the model's config.json)."""
    model_config.to_json_file(str(config_dir / "config.json"))
    mntp = isinstance(cfg, MNTPConfig)
    targets = [m for m in cfg.lora.target_modules if m in LORA_TARGETS] or list(LORA_TARGETS)
    attention = cfg.model.attn_implementation if cfg.model.attn_implementation in ATTENTION_KINDS else "sdpa"
    return PlanConfig(
        model=str(config_dir), stage="mntp" if mntp else "simcse", seq_len=seq_len if mntp else cfg.max_length,
        global_batch_size=cfg.global_batch_size, micro_batch_size=cfg.micro_batch,
        **({"mask_ratio": cfg.mask_ratio} if mntp else {"attention_dropout": cfg.attention_dropout}),
        lora_rank=cfg.lora.r, lora_target_modules=targets, lora_dropout=cfg.lora.dropout,
        gradient_checkpointing=cfg.model.gradient_checkpointing, dtype="bf16" if bf16 else "fp32",
        attn_implementation=attention, gpus_per_node=local_world, nodes=max(1, world // local_world),
        overhead_gib=2.0 if use_gpu else 0.0)


def resolve_zero_stage(cfg: TrainConfig, model_config, *, seq_len: int, bf16: bool, world: int, local_world: int,
                       device: torch.device) -> tuple[int, str]:
    """(stage, why) for ``zero_stage: auto``; a given stage is returned as it is."""
    if cfg.zero_stage != "auto":
        return cfg.zero_stage, f"ZeRO-{cfg.zero_stage} as configured"
    use_gpu = cfg.scaling.use_gpu
    capacity = device_capacity(use_gpu, device, local_world)
    with tempfile.TemporaryDirectory(prefix="bg2vec-plan-") as tmp:
        planned = plan_config(cfg, model_config, seq_len=seq_len, bf16=bf16, world=world, local_world=local_world,
                              use_gpu=use_gpu, config_dir=Path(tmp))
        stage, why = choose_zero_stage(planned, architecture_of(model_config), capacity)
    return stage, f"zero_stage auto -> ZeRO-{stage}: {why} per {'GPU' if use_gpu else 'rank'}"
