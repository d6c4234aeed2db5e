"""The model directory a training stage writes (the contract's layout): its LoRA adapter, the
stages before it, and the encoder config that records every stage's hyperparameters."""

from __future__ import annotations

import shutil
from pathlib import Path

from bg2vec.modeling.encoder import EncoderConfig, write_encoder_files
from bg2vec.storage import redact
from bg2vec.training.adapters import save_adapter

TINY_BASE_DIR = "base_model"  # where a tiny:<family> base is saved inside an output directory


def write_model_dir(staging: Path, stage: str, cfg, state: dict, *, tokenizer, family: str, resolved: dict,
                    tiny_base: Path | None, mntp_dir: Path | None) -> None:
    """Write ``stage``'s output into ``staging``: MNTP's adapter over the base (with a tiny base
    copied in), or SimCSE's over MNTP's stages (copied under ``stages/``)."""
    hyper = {"data": redact(cfg.data), "steps": cfg.max_steps, "global_batch_size": cfg.global_batch_size,
             "lr": cfg.optim.lr, "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha}
    if stage == "mntp":
        base, stages = resolved["base"], []
        if tiny_base is not None:
            shutil.copytree(tiny_base, staging / TINY_BASE_DIR)
            base = TINY_BASE_DIR
        hyper |= {"mask_ratio": cfg.mask_ratio, "mask_token": cfg.mask_token, "mask_strategy": cfg.mask_strategy,
                  "seq_len": resolved["seq_len"]}
        pooling, max_length = "mean", 512
    else:
        mntp_config = EncoderConfig(**resolved["mntp_config"])
        base = mntp_config.base_model
        if not Path(base).is_absolute() and (mntp_dir / base).is_dir():  # a base shipped inside
            shutil.copytree(mntp_dir / base, staging / base)
        stages = [dict(s, adapter=f"stages/{s['name']}") for s in mntp_config.stages]
        for s in mntp_config.stages:
            source = mntp_dir / s["adapter"]
            (staging / "stages" / s["name"]).mkdir(parents=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(source / name, staging / "stages" / s["name"] / name)
        hyper |= {"temperature": cfg.temperature, "attention_dropout": cfg.attention_dropout,
                  "hidden_dropout": cfg.hidden_dropout, "text_unit": cfg.text_unit, "max_length": cfg.max_length}
        pooling, max_length = cfg.pooling, cfg.encoder_max_length
    save_adapter(state, cfg.lora, base, staging)
    stages.append({"name": stage, "adapter": ".", "hyperparameters": hyper})
    write_encoder_files(staging, tokenizer, EncoderConfig(
        base_model=base, family=family, bidirectional=True, pooling=pooling, max_length=max_length,
        stages=stages, base_revision=cfg.model.revision if stage == "mntp" else None))
