"""MNTP training throughput: Ray Train + DeepSpeed ZeRO-3 (1 worker) vs a plain PyTorch loop.

    python bench/train_throughput.py              # about 9 minutes on 2 cores
    python bench/train_throughput.py --rounds 5   # more Ray runs, a firmer median

Same model (the tiny preset's random Mistral with LoRA, gradient checkpointing), same data (the
sample dump prepared with the tiny preset), same batch and sequence length, same masking and loss,
same run. Three loops, so that a gap can be attributed:

- plain PyTorch: torch + peft + AdamW on the prepared Parquet blocks read with pyarrow (the baseline);
- DeepSpeed ZeRO-3 alone: the same loop through ``deepspeed.initialize`` with bg2vec's DeepSpeed
  config, in this process (no Ray);
- Ray Train + DeepSpeed ZeRO-3: ``jobs/mntp.py``'s code path (run_stage), 1 worker, data streamed by
  Ray Data.

The speed of a small cloud machine drifts by up to a quarter over tens of seconds, more than the
gaps measured here, so each ratio is taken against a plain loop run beside it:

- DeepSpeed alone: both engines in this process, their steps alternating; the ratio of the median
  seconds per step.
- Ray Train + DeepSpeed: ROUNDS Ray runs, each between two plain runs (plain, Ray, plain, ..., Ray,
  plain), each against the mean of the plain runs on either side; the table gives the median of
  the rounds and their range. Ray is shut down after every run, so that its idle processes do not
  slow the plain runs. A run's rate is the median of its 10-step windows after WARMUP steps
  (start-up, checkpoints and validation excluded on all sides).

Then the plain loop and Ray again with one compute thread each: on a 2-core machine the other core
is left to Ray's own processes (its controller, the data split coordinator, the raylet, the
dashboard, ...), which otherwise compete with the training threads. All loops flush subnormal
floats, as the training loop does on CPU. Target: Ray + DeepSpeed >= 0.85x the plain loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
from mntp_steps import deepspeed_step, plain_step, single_rank_process_group  # bench/, beside this script
from transformers import AutoTokenizer

from bg2vec.config import load_config
from bg2vec.data.config import PrepareConfig
from bg2vec.data.pipeline import load_manifest, prepare
from bg2vec.objectives.mntp import MNTPMasker, mask_token_id
from bg2vec.training.config import MNTPConfig
from bg2vec.training.metrics import read_scalars
from bg2vec.training.model import add_lora, flush_denormals, load_base, prepare_for_training

REPO = Path(__file__).resolve().parents[1]
STEPS, WARMUP, WINDOW = 150, 30, 10


class MaskedBatches:
    """Random batches of the prepared training blocks, masked as the training loop masks them."""

    def __init__(self, cfg: MNTPConfig, data: Path):
        self.tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
        self.masker = MNTPMasker(mask_token_id(self.tokenizer, cfg.mask_token), len(self.tokenizer),
                                 tuple(self.tokenizer.all_special_ids), cfg.mask_ratio, cfg.mask_strategy)
        self.blocks = np.stack(pq.read_table(data / "blocks" / "train").column("input_ids").to_pylist())
        self.size = cfg.global_batch_size
        self.generator = torch.Generator().manual_seed(0)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(self.blocks), (self.size,), generator=self.generator)
        return self.masker(torch.from_numpy(self.blocks[rows.numpy()].astype(np.int64)), self.generator)


def tiny_model(cfg: MNTPConfig, tokenizer):
    model = load_base(cfg.model, causal_lm=True, tokenizer=tokenizer, dtype=torch.float32, seed=cfg.seed)
    return add_lora(prepare_for_training(model, cfg.model), cfg.lora).train()


def plain_loop(cfg: MNTPConfig, data: Path) -> float:
    """Median tokens/s of the plain loop's WINDOW-step windows after WARMUP steps."""
    batches = MaskedBatches(cfg, data)
    step = plain_step(tiny_model(cfg, batches.tokenizer), cfg)
    windows = []
    for i in range(STEPS):
        if i >= WARMUP and (i - WARMUP) % WINDOW == 0:
            start = time.perf_counter()
        inputs, labels = next(batches)
        step(inputs, labels)
        if i >= WARMUP and (i + 1 - WARMUP) % WINDOW == 0:
            windows.append(WINDOW * inputs.numel() / (time.perf_counter() - start))
    return statistics.median(windows)


def alternating(cfg: MNTPConfig, data: Path) -> tuple[float, float]:
    """Median seconds per step of the plain loop and of DeepSpeed ZeRO-3 alone, their steps
    alternating (on the same batches, each going first every other step) in this process."""
    batches = MaskedBatches(cfg, data)
    plain = plain_step(tiny_model(cfg, batches.tokenizer), cfg)
    with single_rank_process_group("gloo"):
        engine, deepspeed = deepspeed_step(tiny_model(cfg, batches.tokenizer), cfg, bf16=False)
        seconds = {plain: [], deepspeed: []}
        for i in range(STEPS):
            inputs, labels = next(batches)
            for step in (plain, deepspeed) if i % 2 else (deepspeed, plain):
                start = time.perf_counter()
                step(inputs, labels)
                seconds[step].append(time.perf_counter() - start)
        engine.destroy()
    return statistics.median(seconds[plain][WARMUP:]), statistics.median(seconds[deepspeed][WARMUP:])


def ray_deepspeed(cfg: MNTPConfig) -> float:
    """Median tokens/s of the run's metric windows after WARMUP steps (from its TensorBoard scalars)."""
    from bg2vec.training.launch import run_stage

    result = run_stage(cfg)
    ray.shutdown()
    rates = read_scalars(Path(result["run_dir"]) / "tensorboard")["mntp/tokens_per_s"]
    return statistics.median(rate for step, rate in rates if step > WARMUP)


def rounds(runs: list[MNTPConfig], data: Path) -> tuple[list[float], list[float]]:
    """tokens/s of the Ray runs (one per config, each with an output of its own) and of the plain
    runs before, between and after them."""
    plain, through_ray = [plain_loop(runs[0], data)], []
    for cfg in runs:
        through_ray.append(ray_deepspeed(cfg))
        plain.append(plain_loop(cfg, data))
    return plain, through_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="Ray runs per thread count (default 3)")
    count = parser.parse_args().rounds
    flush_denormals()  # as the training loop does on CPU: the plain loops get the same arithmetic
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(load_config(PrepareConfig, str(REPO / "configs/tiny/prepare.yaml"), [f"output={data}"]))
        ray.shutdown()

        def config(threads: int, run: int) -> MNTPConfig:  # Ray Train gives a worker as many threads as CPUs
            return load_config(MNTPConfig, str(REPO / "configs/tiny/mntp.yaml"), [
                f"data={data}", f"output={tmp}/mntp-{threads}-{run}", f"max_steps={STEPS}", "scaling.num_workers=1",
                f"scaling.cpus_per_worker={threads}", f"run.log_every={WINDOW}", "run.eval_every=0",
                f"run.checkpoint_every={STEPS}", "zero_stage=3"])  # what this bench measures

        cfg = config(cores, 0)
        seq_len = load_manifest(str(data))["seq_len"]
        torch.set_num_threads(cores)  # the plain and DeepSpeed-alone loops' threads
        plain_alternating, alone = alternating(cfg, data)
        plain, through_ray = rounds([config(cores, run) for run in range(count)], data)
        torch.set_num_threads(1)  # one compute thread each, the other core left to Ray's own processes
        plain_one, through_ray_one = rounds([config(1, run) for run in range(count)], data)

    tokens = cfg.global_batch_size * seq_len
    print(f"\nMNTP, the tiny preset's {cfg.model.name_or_path} ({cfg.model.tiny_layers} layers, hidden "
          f"{cfg.model.tiny_hidden_size}, LoRA r{cfg.lora.r}, gradient checkpointing), batch {cfg.global_batch_size} "
          f"blocks of {seq_len} tokens, 1 worker; a run's rate is the median of its {WINDOW}-step windows after "
          f"step {WARMUP} of {STEPS}\n")
    print(f"  {'loop':46s} {'tokens/s':>9s} {'ms/step':>8s} {'vs plain':>9s}")

    def row(name: str, rate: float, ratio: float, note: str = "") -> None:  # ms/step: overhead as a cost per step
        print(f"  {name:46s} {rate:9.0f} {1000 * tokens / rate:8.1f} {ratio:8.2f}x  {note}")

    row("DeepSpeed ZeRO-3 alone vs plain, steps alternating", tokens / alone, plain_alternating / alone,
        f"(plain's steps beside it: {tokens / plain_alternating:.0f} tokens/s)")
    for threads, plain_runs, ray_runs in ((cores, plain, through_ray), (1, plain_one, through_ray_one)):
        ratios = [rate / ((before + after) / 2) for rate, before, after in zip(ray_runs, plain_runs, plain_runs[1:])]
        cpus = f"{threads} CPU{'s' if threads > 1 else ''}"
        row(f"plain PyTorch, {threads} thread{'s' if threads > 1 else ''} ({len(plain_runs)} runs)",
            statistics.median(plain_runs), 1.0, "(runs: " + ", ".join(f"{r:.0f}" for r in plain_runs) + ")")
        row(f"Ray Train + DeepSpeed ZeRO-3, {cpus} ({len(ray_runs)} runs)", statistics.median(ray_runs),
            statistics.median(ratios), "(rounds: " + ", ".join(f"{r:.2f}x" for r in ratios) + ")")
    print("\n  (each Ray round against the mean of the plain runs just before and after it; the ratio shown is "
          "the median of the rounds; target >= 0.85x)")


if __name__ == "__main__":
    main()
