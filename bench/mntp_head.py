"""MNTP's LM head on real weights: the full logits vs the scored rows only (bg2vec.objectives.mntp).

    python bench/mntp_head.py                    # Gemma-3-270M, about 6 minutes on 2 cores
    python bench/mntp_head.py --batch 8 --seq 256 --mask-ratio 0.8

Gemma-3-270M (packaged:gemma-3-270m: 262,144-token vocabulary, tied embeddings) with the preset's LoRA
(r16 on every projection) and gradient checkpointing, fp32 on CPU, one optimizer step per batch of
blocks from the sample dump tokenised with Gemma's tokenizer, masked as the training loop masks them:

- full: the model's logits at every position, then the shifted cross-entropy over the masked ones
  (``mntp_loss_and_accuracy``, what the training loop did before);
- scored: ``MaskedNextTokenModel``, the LM head only on the rows whose next token is masked, the
  loss and its input gradient computed chunk by chunk (what the training loop does now).

Each variant runs in a fresh process, alternating (full, scored, full, scored), so that a drift of
the machine's speed hits both; a run's rate is the median seconds per step after WARMUP steps, and
its memory the peak resident set above the one after loading the model (``ru_maxrss``).
Target: scored >= 2x the tokens/s of full at mask ratio 0.2.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS, WARMUP = 10, 2


def run_variant(head: str, batch: int, seq: int, mask_ratio: float) -> dict:
    import numpy as np
    import torch
    from mntp_steps import plain_step  # bench/, beside this script

    from bg2vec.config import load_config
    from bg2vec.data.tokens.tokenization import load_tokenizer
    from bg2vec.objectives.mntp import MNTPMasker, mask_token_id
    from bg2vec.training.config import MNTPConfig
    from bg2vec.training.model import add_lora, flush_denormals, load_base, prepare_for_training

    flush_denormals()
    cfg = load_config(MNTPConfig, str(REPO / "configs/gemma3-270m/mntp.yaml"), [f"mask_ratio={mask_ratio}"])
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    text = (REPO / "bg2vec/resources/bgwiki-sample-pages-articles.xml").read_text()
    ids = np.array(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    blocks = torch.from_numpy(ids[: len(ids) // seq * seq].reshape(-1, seq))
    masker = MNTPMasker(mask_token_id(tokenizer, cfg.mask_token), len(tokenizer), tuple(tokenizer.all_special_ids),
                        cfg.mask_ratio, cfg.mask_strategy)
    model = load_base(cfg.model, causal_lm=True, tokenizer=tokenizer, dtype=torch.float32, seed=0,
                      base_path=None)
    model = add_lora(prepare_for_training(model, cfg.model), cfg.lora).train()
    step = plain_step(model, cfg, head=head)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    generator = torch.Generator().manual_seed(0)
    seconds, losses = [], []
    for _ in range(STEPS):
        rows = torch.randint(len(blocks), (batch,), generator=generator)
        inputs, labels = masker(blocks[rows], generator)
        start = time.perf_counter()
        losses.append(float(step(inputs, labels)))
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_step = statistics.median(seconds[WARMUP:])
    return {"head": head, "tokens_per_s": batch * seq / per_step, "s_per_step": per_step,
            "peak_gib": (peak - loaded) / 2**30, "first_loss": losses[0], "last_loss": losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="blocks per step (the preset's per-worker micro-batch)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--mask-ratio", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batch, args.seq, args.mask_ratio)))
        return
    runs: dict[str, list[dict]] = {"full": [], "scored": []}
    for _ in range(args.rounds):
        for head in runs:
            done = subprocess.run([sys.executable, __file__, "--variant", head, "--batch", str(args.batch),
                                   "--seq", str(args.seq), "--mask-ratio", str(args.mask_ratio)],
                                  capture_output=True, text=True, check=True)
            runs[head].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {head}: {runs[head][-1]['tokens_per_s']:.0f} tokens/s", flush=True)
    print(f"\nGemma-3-270M, LoRA r16, fp32 CPU, {args.batch} x {args.seq} tokens, mask ratio {args.mask_ratio}, "
          f"median of {STEPS - WARMUP} steps per run, {args.rounds} runs each (alternating)\n")
    print("| LM head | tokens/s (runs) | s/step | peak memory above the model | loss (first -> last) |")
    print("| --- | --- | --- | --- | --- |")
    best = {}
    for head, results in runs.items():
        rates = [r["tokens_per_s"] for r in results]
        best[head] = statistics.median(rates)
        print(f"| {head} | {best[head]:.0f} ({', '.join(f'{x:.0f}' for x in rates)}) "
              f"| {statistics.median(r['s_per_step'] for r in results):.2f} "
              f"| {max(r['peak_gib'] for r in results):.2f} GiB "
              f"| {results[0]['first_loss']:.3f} -> {results[0]['last_loss']:.3f} |")
    print(f"\nscored / full: {best['scored'] / best['full']:.2f}x tokens/s (target >= 2x)")


if __name__ == "__main__":
    main()
