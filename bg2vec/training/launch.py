"""The driver side of a training stage: check the inputs, build the TorchTrainer, run it, report.

Nothing heavy happens here: the driver never loads the model; it resolves where things are
(tokenizer, base model, run directory) and hands them to the workers in ``train_loop_config``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from bg2vec.config import to_dict
from bg2vec.console import train_log_level, verbose
from bg2vec.data.output_dir import read_manifest
from bg2vec.data.pipeline import load_manifest
from bg2vec.errors import Bg2VecError, reraise_user_error
from bg2vec.modeling.encoder import CONFIG_NAME
from bg2vec.ray_session import init_ray
from bg2vec.storage import absolute, check_apart, child, exists, is_local, redact, resolve
from bg2vec.training.config import ContrastiveConfig, MNTPConfig, SimCSEConfig, TrainConfig
from bg2vec.training.data import (
    block_datasets,
    dev_dataset,
    dev_pairs_dataset,
    fits_in_memory,
    pair_datasets,
    text_datasets,
)
from bg2vec.training.output import output_state, take_failure


def run_stage(cfg: TrainConfig, callbacks: Sequence = ()) -> dict:
    """Train one stage; returns the final metrics (step, samples, loss, ...) and where things are.

    ``callbacks``: Ray Train callbacks for the run (a Tune trial passes its TuneReportCallback). In a
    Tune trial Ray is already running and the run joins it."""
    stage = STAGE_NAMES[type(cfg)]
    # the workers read and write these paths from directories of their own
    inputs = {key: absolute(getattr(cfg, key)) for key in ("data", "mntp", "simcse", "pairs")
              if getattr(cfg, key, None)}
    cfg = dataclasses.replace(cfg, output=absolute(cfg.output), **inputs)
    if os.path.exists(cfg.model.name_or_path):  # a local base model folder
        cfg.model = dataclasses.replace(cfg.model, name_or_path=absolute(cfg.model.name_or_path))
    check_apart(cfg.output, {"model.name_or_path": cfg.model.name_or_path, **inputs})
    manifest = _read_pairs(cfg) if stage == "contrastive" else load_manifest(cfg.data)
    state = output_state(cfg.output)
    if state != "missing" and not cfg.overwrite:
        what = "a trained model" if state == "complete" else "files"
        raise Bg2VecError(f"output {redact(cfg.output)} already holds {what}; choose another output= or pass "
                          f"overwrite=true")
    resolved = {"stage": stage, "cfg": to_dict(cfg),
                "seq_len": cfg.max_length if stage == "contrastive" else manifest["seq_len"]}
    if stage == "mntp":
        resolved["tokenizer"] = (child(cfg.data, "tokenizer") if manifest["tokenizer"].get("trained")
                                 else manifest["tokenizer"]["name_or_path"])
        resolved["base"] = cfg.model.name_or_path
    else:  # the trained directory this stage continues: its base, its tokenizer, its stages merged
        key = "simcse" if getattr(cfg, "simcse", None) else "mntp"
        start = getattr(cfg, key)
        start_config = _read_trained(start, key)
        resolved["tokenizer"] = resolved["start"] = start
        resolved["start_config"] = start_config  # read once here; the workers' output names its stages
        base = start_config["base_model"]
        fs, path = resolve(start)
        resolved["base"] = child(start, base) if exists(fs, f"{path}/{base}") else base
    storage = cfg.run.storage_path or f"{cfg.output.rstrip('/')}.runs"
    storage = absolute(storage)
    name = cfg.run.name or stage
    run_dir = child(storage, name)
    take_failure(run_dir)  # a stale one, from an earlier run of this name that hit a NaN
    resolved |= {"run_name": name, "run_dir": run_dir, "verbose": verbose(),  # the driver's --verbose, on any cluster
                 "tensorboard": child(run_dir, "tensorboard") if _tensorboard_ok(storage) else None}

    import ray.train
    from ray.train.torch import TorchTrainer

    from bg2vec.training.loop import train_loop_per_worker

    init_ray(cfg.run.ray_address)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # the training loop reports progress
    small = fits_in_memory(manifest, stage)
    if stage == "mntp":
        datasets = block_datasets(cfg.data, manifest, cfg.seed, small)
    elif stage == "simcse":
        datasets = text_datasets(cfg.data, manifest, cfg.seed, cfg.text_unit, cfg.min_chars, small)
    else:
        datasets = pair_datasets(cfg.pairs, manifest, cfg.seed, cfg.kinds, small)
    if cfg.run.dev_blocks:
        datasets["dev"] = (dev_pairs_dataset(cfg.pairs, manifest, cfg.run.dev_blocks, cfg.scaling.num_workers)
                           if stage == "contrastive" else
                           dev_dataset(cfg.data, manifest, cfg.run.dev_blocks, cfg.scaling.num_workers))
    resources = {"CPU": cfg.scaling.cpus_per_worker} | ({"GPU": 1} if cfg.scaling.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=resolved, datasets=datasets,
        dataset_config=ingest_config(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                               resources_per_worker=resources,
                                               accelerator_type=cfg.scaling.accelerator_type),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level=train_log_level()),  # its files keep everything
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints)))
    with reraise_user_error():
        result = trainer.fit()
    failure = take_failure(run_dir)
    if failure is not None:
        last = result.checkpoint.path if result.checkpoint else "none"
        raise Bg2VecError(f"{stage}: {failure}; last checkpoint: {last}")
    return {"stage": stage, "output": cfg.output, "run_dir": run_dir, "metrics": dict(result.metrics or {}),
            "checkpoint": result.checkpoint.path if result.checkpoint else None}


STAGE_NAMES = {MNTPConfig: "mntp", SimCSEConfig: "simcse", ContrastiveConfig: "contrastive"}
TRAINED = {"mntp": "MNTP", "simcse": "SimCSE"}


def ingest_config():
    """How Ray Train hands the datasets to the workers: train and validation split between them, dev
    whole on every worker. The shards' Ray Data options are Ray Train's default, taken from the
    driver's DataContext, so a user's settings there (resource limits, preserve_order) reach them."""
    import ray.train

    return ray.train.DataConfig(datasets_to_split=["train", "validation"])


def _read_trained(directory: str, stage: str) -> dict:
    """The bg2vec_config.json of ``stage``'s output (``stage=DIR``), checked to be that stage's."""
    fs, path = resolve(directory)
    if not exists(fs, f"{path}/{CONFIG_NAME}"):
        raise Bg2VecError(f"{stage}={redact(directory)} is not a trained {TRAINED[stage]} directory "
                          f"(no {CONFIG_NAME}): run jobs/{stage}.py first")
    with fs.open_input_stream(f"{path}/{CONFIG_NAME}") as f:
        config = json.loads(f.read())
    if not config.get("stages") or config["stages"][-1]["name"] != stage:
        raise Bg2VecError(f"{stage}={redact(directory)}: its last stage is "
                          f"{(config.get('stages') or [{'name': 'none'}])[-1]['name']!r}, not {stage!r}")
    return config


PAIRS_FORMAT = "bg2vec-pairs-v1"


def _read_pairs(cfg: ContrastiveConfig) -> dict:
    """The pairs directory's manifest, checked: complete, of this format, with enough training pairs."""
    where = f"pairs={redact(cfg.pairs)}"
    manifest = read_manifest(cfg.pairs, "pairs", "pairs directory", "jobs/pairs.py")
    if manifest.get("format") != PAIRS_FORMAT:
        raise Bg2VecError(f"{where}: manifest.json has format {manifest.get('format')!r}, not {PAIRS_FORMAT!r}; "
                          f"make the pairs with this bg2vec's jobs/pairs.py")
    files, counts = manifest.get("files") or {}, manifest.get("counts") or {}
    missing = [f"pairs/{split}" for split in ("train", "validation") if f"pairs/{split}" not in files]
    if missing or "train" not in counts:
        raise Bg2VecError(f"{where}: manifest.json lists no files for {missing or ['counts.train']}; the directory "
                          f"is incomplete: make it again with jobs/pairs.py")
    train = sum(n for kind, n in counts["train"].items() if not cfg.kinds or kind in cfg.kinds)
    if train < cfg.global_batch_size:
        kinds = f" of kinds {cfg.kinds}" if cfg.kinds else ""
        raise Bg2VecError(f"{where} holds {train} training pair(s){kinds} (by kind: {counts['train']}), fewer than "
                          f"one global batch ({cfg.global_batch_size}): make more pairs, widen kinds= or lower "
                          f"global_batch_size")
    return manifest


def _tensorboard_ok(storage: str) -> bool:
    return is_local(storage) or storage.startswith("s3://")  # what tensorboardX can write to
