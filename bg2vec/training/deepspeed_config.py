"""The DeepSpeed configuration of a training run, derived from the typed config."""

from __future__ import annotations

from bg2vec.training.config import TrainConfig


def deepspeed_config(cfg: TrainConfig, bf16: bool) -> dict:
    """ZeRO stage, batch arithmetic, clipping and precision for ``deepspeed.initialize``.

    The optimizer is DeepSpeed's AdamW only with optimizer offload (it then builds its CPU Adam);
    otherwise the training loop passes torch's AdamW, which needs no compiled ops on any accelerator.
    """
    if cfg.zero_stage == "auto":
        raise ValueError("zero_stage auto is decided on the workers first (bg2vec.training.zero_stage)")
    zero: dict = {"stage": cfg.zero_stage, "contiguous_gradients": True, "overlap_comm": cfg.scaling.use_gpu}
    if cfg.zero_stage == 3:
        # trained weights are only the adapters: saving gathers them ourselves, never the 16-bit base
        zero |= {"stage3_gather_16bit_weights_on_model_save": False, "stage3_param_persistence_threshold": 1e4,
                 # DeepSpeed's memory-efficient linear re-gathers each weight in backward instead of letting
                 # autograd hold it; under gradient checkpointing a layer's saved tensors only live during its
                 # own recompute and backward, so it would save no memory and cost a Python autograd function
                 # per projection (0.75x -> 0.86x a plain loop on the tiny preset, bench/train_throughput.py)
                 "memory_efficient_linear": not cfg.model.gradient_checkpointing}
    config = {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.gradient_accumulation,
        "gradient_clipping": cfg.optim.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # bg2vec logs its own metrics
        "wall_clock_breakdown": False,
    }
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.optim.lr, "betas": list(cfg.optim.betas), "weight_decay": cfg.optim.weight_decay}}
    return config
