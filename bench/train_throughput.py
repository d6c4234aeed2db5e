"""MNTP training throughput: Ray Train + DeepSpeed ZeRO-3 (1 worker) vs a plain PyTorch loop.

    python bench/train_throughput.py            # about 8 minutes on 2 cores

Same model (the tiny preset's random Mistral with LoRA, gradient checkpointing), same data (the
sample dump prepared with the tiny preset), same batch and sequence length, same masking and loss,
same run. Three loops, so that a gap can be attributed:

- plain PyTorch: torch + peft + AdamW on the prepared Parquet blocks read with pyarrow (the baseline);
- DeepSpeed ZeRO-3 alone: the same loop through ``deepspeed.initialize`` with bg2vec's DeepSpeed
  config, in this process (no Ray);
- Ray Train + DeepSpeed ZeRO-3: ``jobs/mntp.py``'s code path (run_stage), 1 worker, data streamed by
  Ray Data.

Each reports the median tokens/s of its 10-step windows after the first WARMUP steps (start-up,
checkpoints and validation excluded on all sides); the plain loop runs before and after the others
and counts its better run. Then the plain loop and Ray once more with one compute thread each (the
plain loop again before and after): on a 2-core machine the other core is left to Ray's own
processes (its controller, the data split coordinator, the raylet, ...), which otherwise compete
with the training threads. All loops flush subnormal floats, as the training loop does on CPU.
Target: Ray + DeepSpeed >= 0.85x the plain loop.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
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


def bare_loop(cfg: MNTPConfig, data: Path, use_deepspeed: bool) -> list[float]:
    """tokens/s of each WINDOW-step window after WARMUP steps of a loop without Ray."""
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = load_base(cfg.model, causal_lm=True, tokenizer=tokenizer, dtype=torch.float32, seed=cfg.seed)
    model = add_lora(prepare_for_training(model, cfg.model), cfg.lora).train()
    engine, step = deepspeed_step(model, cfg, bf16=False) if use_deepspeed else (None, plain_step(model, cfg))
    masker = MNTPMasker(mask_token_id(tokenizer, cfg.mask_token), len(tokenizer), tuple(tokenizer.all_special_ids),
                        cfg.mask_ratio, cfg.mask_strategy)
    blocks = np.stack(pq.read_table(data / "blocks" / "train").column("input_ids").to_pylist()).astype(np.int64)
    generator = torch.Generator().manual_seed(0)
    windows = []
    for i in range(STEPS):
        if i >= WARMUP and (i - WARMUP) % WINDOW == 0:
            start = time.perf_counter()
        rows = torch.randint(len(blocks), (cfg.global_batch_size,), generator=generator)
        ids = torch.from_numpy(blocks[rows.numpy()])
        step(*masker(ids, generator))
        if i >= WARMUP and (i + 1 - WARMUP) % WINDOW == 0:
            windows.append(WINDOW * ids.numel() / (time.perf_counter() - start))
    if engine is not None:
        engine.destroy()
    return windows


def ray_deepspeed(cfg: MNTPConfig) -> tuple[list[float], float]:
    """tokens/s of the run's metric windows after WARMUP steps (from its TensorBoard scalars)."""
    from bg2vec.training.launch import run_stage

    start = time.perf_counter()
    result = run_stage(cfg)
    wall = time.perf_counter() - start
    rates = read_scalars(Path(result["run_dir"]) / "tensorboard")["mntp/tokens_per_s"]
    return [rate for step, rate in rates if step > WARMUP], wall


def main() -> None:
    flush_denormals()  # as the training loop does on CPU: the plain loops get the same arithmetic
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(load_config(PrepareConfig, str(REPO / "configs/tiny/prepare.yaml"), [f"output={data}"]))

        def config(threads: int) -> MNTPConfig:  # Ray Train gives a worker as many threads as CPUs
            return load_config(MNTPConfig, str(REPO / "configs/tiny/mntp.yaml"), [
                f"data={data}", f"output={tmp}/mntp-{threads}", f"max_steps={STEPS}", "scaling.num_workers=1",
                f"scaling.cpus_per_worker={threads}", f"run.log_every={WINDOW}", "run.eval_every=0",
                f"run.checkpoint_every={STEPS}"])

        seq_len = load_manifest(str(data))["seq_len"]
        cfg = config(cores)
        torch.set_num_threads(cores)  # the plain and DeepSpeed-alone loops' threads
        plain = [bare_loop(cfg, data, use_deepspeed=False)]
        with single_rank_process_group("gloo"):
            alone = bare_loop(cfg, data, use_deepspeed=True)
        ray_windows, wall = ray_deepspeed(cfg)
        plain.append(bare_loop(cfg, data, use_deepspeed=False))
        one = config(1)  # one compute thread each, the other core left to Ray's own processes
        torch.set_num_threads(1)
        plain_one = [bare_loop(one, data, use_deepspeed=False)]
        ray_one, _ = ray_deepspeed(one)
        plain_one.append(bare_loop(one, data, use_deepspeed=False))
    medians, medians_one = ([statistics.median(w) for w in runs] for runs in (plain, plain_one))
    base, base_one = max(medians), max(medians_one)
    rows = [(f"plain PyTorch, {cores} threads (better of 2)", base, base),
            (f"DeepSpeed ZeRO-3 alone, {cores} threads", statistics.median(alone), base),
            (f"Ray Train + DeepSpeed ZeRO-3, {cores} CPUs", statistics.median(ray_windows), base),
            ("plain PyTorch, 1 thread (better of 2)", base_one, base_one),
            ("Ray Train + DeepSpeed ZeRO-3, 1 CPU", statistics.median(ray_one), base_one)]
    print(f"\nMNTP, the tiny preset's {cfg.model.name_or_path} ({cfg.model.tiny_layers} layers, hidden "
          f"{cfg.model.tiny_hidden_size}, LoRA r{cfg.lora.r}, gradient checkpointing), batch {cfg.global_batch_size} "
          f"blocks of {seq_len} tokens, 1 worker; median of the {WINDOW}-step windows after step {WARMUP} of {STEPS}\n")
    tokens = cfg.global_batch_size * seq_len
    print(f"  {'loop':44s} {'tokens/s':>9s} {'ms/step':>8s} {'vs plain':>9s}")
    for name, rate, against in rows:  # ms/step shows the overhead as a fixed cost per optimizer step
        print(f"  {name:44s} {rate:9.0f} {1000 * tokens / rate:8.1f} {rate / against:8.2f}x")
    print(f"\n  (plain runs' medians: {', '.join(f'{m:.0f}' for m in medians)} tokens/s with {cores} threads, "
          f"{', '.join(f'{m:.0f}' for m in medians_one)} with 1; Ray windows {min(ray_windows):.0f}-"
          f"{max(ray_windows):.0f}; the Ray job took {wall:.0f} s end to end, start-up included; each ratio is "
          f"against the plain loop with the same threads, run before and after it; target >= 0.85x)")


if __name__ == "__main__":
    main()
