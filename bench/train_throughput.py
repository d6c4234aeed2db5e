"""MNTP training throughput: Ray Train + DeepSpeed ZeRO-3 (1 worker) vs a plain PyTorch loop.

    python bench/train_throughput.py            # about 4 minutes on 2 cores

Same model (the tiny preset's random Mistral with LoRA, gradient checkpointing), same data (the
sample dump prepared with the tiny preset), same batch and sequence length, same masking and loss,
same run. The plain loop is torch + peft + AdamW on the prepared Parquet blocks read with pyarrow,
no Ray, no DeepSpeed. Both report steady-state tokens/s: the plain loop after its warm-up steps, Ray
from its last metric window (start-up, data and checkpoint costs excluded on both sides; the
end-to-end wall time of the Ray job is printed too). Target: Ray + DeepSpeed >= 0.85x the plain loop.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer

from bg2vec.config import load_config
from bg2vec.data.config import PrepareConfig
from bg2vec.data.pipeline import prepare
from bg2vec.objectives.mntp import MNTPMasker, mask_token_id, mntp_loss_and_accuracy
from bg2vec.training.config import MNTPConfig
from bg2vec.training.model import add_lora, load_base, prepare_for_training

REPO = Path(__file__).resolve().parents[1]
STEPS, WARMUP, LOG_EVERY = 60, 10, 10


def plain_loop(cfg: MNTPConfig, data: Path) -> float:
    """tokens/s of a bare torch training loop over the same blocks, after WARMUP steps."""
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    model = load_base(cfg.model, causal_lm=True, tokenizer=tokenizer, dtype=torch.float32, seed=cfg.seed)
    model = add_lora(prepare_for_training(model, cfg.model), cfg.lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    masker = MNTPMasker(mask_token_id(tokenizer, cfg.mask_token), len(tokenizer), tuple(tokenizer.all_special_ids),
                        cfg.mask_ratio, cfg.mask_strategy)
    blocks = np.stack(pq.read_table(data / "blocks" / "train").column("input_ids").to_pylist()).astype(np.int64)
    generator = torch.Generator().manual_seed(0)
    tokens = 0
    for step in range(STEPS):
        if step == WARMUP:
            start, tokens = time.perf_counter(), 0
        rows = torch.randint(len(blocks), (cfg.global_batch_size,), generator=generator)
        ids = torch.from_numpy(blocks[rows.numpy()])
        inputs, labels = masker(ids, generator)
        loss, _ = mntp_loss_and_accuracy(model(input_ids=inputs).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += ids.numel()
    return tokens / (time.perf_counter() - start)


def ray_deepspeed(cfg: MNTPConfig) -> tuple[float, float]:
    from bg2vec.training.launch import run_stage

    start = time.perf_counter()
    result = run_stage(cfg)
    return result["metrics"]["tokens_per_s"], time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(load_config(PrepareConfig, str(REPO / "configs/tiny/prepare.yaml"), [f"output={data}"]))
        cfg = load_config(MNTPConfig, str(REPO / "configs/tiny/mntp.yaml"), [
            f"data={data}", f"output={tmp}/mntp", f"max_steps={STEPS}", "scaling.num_workers=1",
            f"scaling.cpus_per_worker={os.cpu_count()}", f"run.log_every={LOG_EVERY}", "run.eval_every=0",
            f"run.checkpoint_every={STEPS}"])
        plain = [plain_loop(cfg, data)]
        ours, wall = ray_deepspeed(cfg)
        plain.append(plain_loop(cfg, data))
    best = max(plain)
    print(f"\nMNTP, the tiny preset's {cfg.model.name_or_path} ({cfg.model.tiny_layers} layers, hidden "
          f"{cfg.model.tiny_hidden_size}, LoRA r{cfg.lora.r}), batch {cfg.global_batch_size} blocks of 128 tokens, "
          f"{torch.get_num_threads()} threads; steady state over the last {LOG_EVERY} of {STEPS} steps\n")
    print(f"  {'loop':34s} {'tokens/s':>9s} {'vs plain':>9s}")
    print(f"  {'plain PyTorch (best of 2)':34s} {best:9.0f} {1.0:8.2f}x")
    print(f"  {'Ray Train + DeepSpeed ZeRO-3, 1 wkr':34s} {ours:9.0f} {ours / best:8.2f}x")
    print(f"\n  (plain runs: {', '.join(f'{p:.0f}' for p in plain)} tokens/s; the Ray job took {wall:.0f} s end to "
          f"end for {STEPS} steps, start-up included)")


if __name__ == "__main__":
    main()
