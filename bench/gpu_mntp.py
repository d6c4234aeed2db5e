"""MNTP on one GPU for BgGPT-7B's shape with random weights: tokens/s, memory and model FLOPs utilisation.

    python bench/gpu_mntp.py                      # one CUDA GPU with 40 GB or more, about 4 minutes
    python bench/gpu_mntp.py --zero-stage 2       # DeepSpeed ZeRO-2 instead of ZeRO-3 (0: plain data parallel)
    python bench/gpu_mntp.py --json runs/gpu.json # also keep every number
    python bench/gpu_mntp.py --smoke              # the same code on CPU at a toy size, in a minute

The training loop's model and step, configured by configs/bggpt-7b/mntp.yaml: Mistral-7B's shape with
BgGPT's 38,000-token vocabulary (bg2vec.planning's ``bggpt-7b``; weights are random, which changes
nothing in the arithmetic), bf16, bidirectional SDPA attention, LoRA r16 on the seven projections,
non-reentrant gradient checkpointing, MNTP masking (ratio 0.8, all masked) and the shifted loss over
512-token blocks of random tokens. Two loops:

- plain PyTorch: torch's AdamW on the adapters (the baseline). The adapters compute in bf16, as under
  DeepSpeed's bf16 engine (which casts the whole model and keeps fp32 master weights in its optimizer):
  peft's default fp32 adapters cast every adapted input to fp32 and ran 30% slower (5,745 against
  8,199 tokens/s at micro-batch 16 on an H100);
- DeepSpeed ZeRO-3 alone (one rank, NCCL): bg2vec's ``deepspeed_config`` and whole-layer fetch units,
  the training loop's code path without Ray (Ray Train adds no work to a GPU step). ``--zero-stage 2``
  measures stage 2 instead, which gathers no weights.

Micro-batches of 4 blocks (what each of 8 GPUs runs at the preset's global batch of 32) to 32 (the
whole global batch on one GPU); the plain loop also without checkpointing at 4, to show what the
recomputation costs.

Per row: the median time of the timed steps (synchronised: the loop reads the loss every step, as
the training loop logs it), tokens/s, the peak memory torch allocated against bg2vec's planner's
estimate without its fixed overhead (``bg2vec plan``), and MFU = planner FLOPs per token x tokens/s
/ the datasheet's dense bf16 peak. The planner counts the FLOPs actually executed: forward, the
input-gradient backward of the frozen base (no weight gradients), the recomputation, LoRA and the
two attention matmuls. A bf16 8192^3 matrix product measured in the same run gives the achievable
rate. The reference (the original bg2vec notebooks) did about 2,700 tokens/s on one A100.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from mntp_steps import deepspeed_step, plain_step, single_rank_process_group  # bench/, beside this script

from bg2vec._compat import enable_activation_checkpointing
from bg2vec.config import load_config
from bg2vec.objectives.mntp import MNTPMasker
from bg2vec.planning import (
    GIB,
    GPUS,
    PRESETS,
    REFERENCE,
    Architecture,
    PlanConfig,
    flops_per_token,
    gpu_of_device,
    memory,
    transformers_config,
)
from bg2vec.training.config import MNTPConfig
from bg2vec.training.model import add_lora, flush_denormals, prepare_for_training

REPO = Path(__file__).resolve().parents[1]
SPECIAL_IDS = (0, 1, 2)  # Mistral's <unk>, <s>, </s>: never masked
SMOKE = Architecture("mistral", 512, 64, 128, 2, 4, 2, 16, tie_word_embeddings=False)
MISTRAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "sliding_window": None}


def build(cfg: MNTPConfig, arch: Architecture, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    """The training loop's model (bidirectional, LoRA), built directly on ``device`` from ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    with device:
        model = AutoModelForCausalLM.from_config(transformers_config(arch, **MISTRAL_IDS), dtype=dtype,
                                                 attn_implementation=cfg.model.attn_implementation)
    settings = dataclasses.replace(cfg.model, gradient_checkpointing=checkpointing)
    return add_lora(prepare_for_training(model, settings), cfg.lora).to(dtype).train()  # bf16 adapters too


def measure(step, micro_batch: int, seq_len: int, masker: MNTPMasker, device: torch.device, warmup: int,
            timed: int) -> dict:
    """Median seconds per step over ``timed`` steps after ``warmup``, and the peak memory allocated."""
    generator = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for i in range(warmup + timed):
        ids = torch.randint(len(SPECIAL_IDS), masker.vocab_size, (micro_batch, seq_len), device=device,
                            generator=generator)
        inputs, labels = masker(ids, generator)
        start = time.perf_counter()
        loss = step(inputs, labels)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} at step {i} (micro-batch {micro_batch})")
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    median = statistics.median(seconds)
    return {"seconds_per_step": median, "tokens_per_s": micro_batch * seq_len / median, "peak_bytes": peak,
            "last_loss": loss.item()}


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """The achievable bf16 rate: a random n^3 matrix product, timed after a warm-up."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_tflops(device: torch.device) -> tuple[str, float]:
    """The planner's GPU entry for this device (H100, H200, A100, ...), by name."""
    name = torch.cuda.get_device_name(device)
    gpu = gpu_of_device(name)
    if gpu is None:
        raise SystemExit(f"{name}: no datasheet peak in bg2vec.planning.GPUS; add it there")
    return gpu.name, gpu.peak_tflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, toy shape, 2 timed steps: checks the code")
    parser.add_argument("--zero-stage", type=int, choices=(0, 2, 3), default=3, help="DeepSpeed's ZeRO stage")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args()

    cfg = load_config(MNTPConfig, str(REPO / "configs/bggpt-7b/mntp.yaml"), [
        "scaling.num_workers=1", "global_batch_size=4", "micro_batch_size=4", f"scaling.use_gpu={not args.smoke}",
        f"zero_stage={args.zero_stage}"])
    if args.smoke:
        flush_denormals()
        arch, seq_len, device, dtype, backend = SMOKE, 64, torch.device("cpu"), torch.float32, "gloo"
        micro_batches, warmup, timed = (2, 4), 1, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU: run with --smoke to check the code on CPU")
        arch, seq_len, dtype, backend = PRESETS["bggpt-7b"], 512, torch.bfloat16, "nccl"
        device = torch.device("cuda", 0)
        micro_batches, warmup, timed = (4, 8, 16, 32), 3, 10
        torch.cuda.set_device(device)
    masker = MNTPMasker(arch.vocab_size - 1, arch.vocab_size, SPECIAL_IDS, cfg.mask_ratio, cfg.mask_strategy)

    def run(name: str, step, micro_batch: int, checkpointing: bool, zero_stage: int) -> dict:
        result = measure(step, micro_batch, seq_len, masker, device, warmup, timed)
        plan_cfg = PlanConfig(seq_len=seq_len, micro_batch_size=micro_batch, gpus_per_node=1,
                              lora_rank=cfg.lora.r, lora_target_modules=list(cfg.lora.target_modules),
                              lora_dropout=cfg.lora.dropout, zero_stage=zero_stage,
                              gradient_checkpointing=checkpointing, dtype="bf16" if dtype == torch.bfloat16 else "fp32",
                              attn_implementation=cfg.model.attn_implementation)
        planned = memory(plan_cfg, arch)
        row = {"loop": name, "micro_batch": micro_batch, "checkpointing": checkpointing, **result,
               "planned_bytes": planned.total - planned.overhead,
               "flops_per_token": flops_per_token(plan_cfg, arch)}
        print(f"  {name} micro-batch {micro_batch}: {result['tokens_per_s']:.0f} tokens/s, "
              f"{result['peak_bytes'] / GIB:.1f} GiB", flush=True)
        return row

    rows = []
    model = build(cfg, arch, device, dtype, checkpointing=False)
    rows.append(run("plain PyTorch, no checkpointing", plain_step(model, cfg), micro_batches[0], False, 0))
    enable_activation_checkpointing(model, {"use_reentrant": False})
    step = plain_step(model, cfg)
    rows += [run("plain PyTorch", step, mb, True, 0) for mb in micro_batches]
    del model, step
    with single_rank_process_group(backend):
        engine, step = deepspeed_step(build(cfg, arch, device, dtype, checkpointing=True), cfg, dtype == torch.bfloat16)
        rows += [run(f"DeepSpeed ZeRO-{cfg.zero_stage}", step, mb, True, cfg.zero_stage) for mb in micro_batches]
        engine.destroy()

    gpu, peak = ("CPU (smoke run)", 1.0) if args.smoke else peak_tflops(device)
    achievable = 0.0 if args.smoke else matmul_tflops(device)
    baseline = {r["micro_batch"]: r["tokens_per_s"] for r in rows if r["loop"] == "plain PyTorch"}
    shape = "a toy Mistral (smoke run)" if args.smoke else "BgGPT-7B's shape, random weights"
    print(f"\nMNTP, {shape}, LoRA r{cfg.lora.r} "
          f"on {len(cfg.lora.target_modules)} projections, seq {seq_len}, {dtype}, {cfg.model.attn_implementation}; "
          f"{gpu}; torch {torch.__version__}; median of {timed} steps after {warmup}\n")
    print(f"  {'loop':34s} {'micro':>5s} {'tokens/s':>9s} {'ms/step':>8s} {'vs plain':>8s} {'peak GiB':>8s} "
          f"{'planned':>8s} {'MFU':>6s}")
    for r in rows:
        r["mfu"] = r["flops_per_token"] * r["tokens_per_s"] / (peak * 1e12)
        against = baseline.get(r["micro_batch"]) if r["checkpointing"] else None
        ratio = f"{r['tokens_per_s'] / against:.2f}x" if against else ""
        print(f"  {r['loop']:34s} {r['micro_batch']:5d} {r['tokens_per_s']:9.0f} {1000 * r['seconds_per_step']:8.1f} "
              f"{ratio:>8s} {r['peak_bytes'] / GIB:8.1f} "
              f"{r['planned_bytes'] / GIB:8.1f} {r['mfu']:6.1%}")
    reference = PlanConfig(seq_len=512, lora_rank=cfg.lora.r)
    reference_mfu = 2700 * flops_per_token(reference, PRESETS["bggpt-7b"]) / (GPUS["a100-80gb"].peak_tflops * 1e12)
    print(f"\n  MFU against {peak:g} TFLOP/s, the datasheet's dense bf16 peak; a bf16 8192^3 matrix product ran at "
          f"{achievable:.0f} TFLOP/s here. 'planned': bg2vec's planner without its fixed overhead, against torch's "
          f"peak allocation. Reference: {REFERENCE}, {reference_mfu:.1%} MFU by the same count.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": gpu, "peak_tflops": peak, "matmul_tflops": achievable,
                                         "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
