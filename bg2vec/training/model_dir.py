"""The model directory a training stage writes (the contract's layout): its LoRA adapter, the
stages before it, and the encoder config that records every stage's hyperparameters."""

from __future__ import annotations

import shutil
from pathlib import Path

from bg2vec.modeling.encoder import ADAPTER_FILES, EncoderConfig, write_encoder_files
from bg2vec.storage import redact
from bg2vec.training.adapters import save_adapter

TINY_BASE_DIR = "base_model"  # where a tiny:<family> base is saved inside an output directory


def write_model_dir(staging: Path, stage: str, cfg, state: dict, *, tokenizer, family: str, resolved: dict,
                    tiny_base: Path | None, start_dir: Path | None) -> None:
    """Write ``stage``'s output into ``staging``: MNTP's adapter over the base (with a tiny base
    copied in), or a later stage's over the stages of the directory it started from (``start_dir``,
    whose adapters are copied under ``stages/<name>/``)."""
    source = {"pairs": redact(cfg.pairs)} if stage == "contrastive" else {"data": redact(cfg.data)}
    hyper = {**source, "steps": cfg.max_steps, "global_batch_size": cfg.global_batch_size, "lr": cfg.optim.lr,
             "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha}
    encoder = {"pooling": "mean", "max_length": 512}
    if stage == "mntp":
        base, stages = resolved["base"], []
        if tiny_base is not None:
            shutil.copytree(tiny_base, staging / TINY_BASE_DIR)
            base = TINY_BASE_DIR
        hyper |= {"mask_ratio": cfg.mask_ratio, "mask_token": cfg.mask_token, "mask_strategy": cfg.mask_strategy,
                  "seq_len": resolved["seq_len"]}
    else:
        base, stages = _copy_earlier_stages(staging, start_dir, EncoderConfig(**resolved["start_config"]))
        hyper |= {"temperature": cfg.temperature, "attention_dropout": cfg.attention_dropout,
                  "hidden_dropout": cfg.hidden_dropout, "max_length": cfg.max_length}
        encoder = {"pooling": cfg.pooling, "max_length": cfg.encoder_max_length}
    if stage == "simcse":
        hyper["text_unit"] = cfg.text_unit
    if stage == "contrastive":
        hyper |= {"query_instruction": cfg.query_instruction,
                  "hard_negatives": cfg.hard_negatives, "matryoshka_dims": list(cfg.matryoshka_dims),
                  "kinds": list(cfg.kinds)}
        encoder |= {"prompts": {"query": cfg.query_instruction} if cfg.query_instruction else {},
                    "matryoshka_dims": sorted(cfg.matryoshka_dims)}
    save_adapter(state, cfg.lora, base, staging)
    stages.append({"name": stage, "adapter": ".", "hyperparameters": hyper})
    write_encoder_files(staging, tokenizer, EncoderConfig(
        base_model=base, family=family, bidirectional=True, stages=stages,
        base_revision=cfg.model.revision if stage == "mntp" else None, **encoder))


def _copy_earlier_stages(staging: Path, start_dir: Path, start: EncoderConfig) -> tuple[str, list[dict]]:
    """Copy the start directory's adapters (and a base shipped inside it) into ``staging``: (base, stages)."""
    base = start.base_model
    if not Path(base).is_absolute() and (start_dir / base).is_dir():  # a base shipped inside
        shutil.copytree(start_dir / base, staging / base)
    for s in start.stages:
        (staging / "stages" / s["name"]).mkdir(parents=True)
        for name in ADAPTER_FILES:
            shutil.copy2(start_dir / s["adapter"] / name, staging / "stages" / s["name"] / name)
    return base, [dict(s, adapter=f"stages/{s['name']}") for s in start.stages]
