"""Plan a training run before renting GPUs: memory per GPU and time, from the model's shape alone.

    # BgGPT-7B MNTP as configs/bggpt-7b/mntp.yaml runs it, on one node of 8 x A100-80GB
    python jobs/plan.py --config configs/bggpt-7b/plan.yaml

    # will it fit on one 24 GB GPU without ZeRO? (no: the plan says what would)
    python jobs/plan.py --config configs/bggpt-7b/plan.yaml gpu=L4-24GB gpus_per_node=1 zero_stage=0

    # SimCSE for BgGPT-Gemma-2-9B on 2 nodes of H100s, with a cost line
    python jobs/plan.py --config configs/bggpt-gemma2-9b/plan.yaml stage=simcse seq_len=128 \\
        global_batch_size=128 micro_batch_size=8 attention_dropout=0.3 gpu=H100-80GB nodes=2 price_per_gpu_hour=2.5

    # any decoder whose config.json you have (a file or a model folder; no weights, no download)
    python jobs/plan.py model=path/to/config.json gpu=H200-141GB gpus_per_node=4

Prints the per-GPU memory (weights, LoRA states, activations, logits, overhead) next to DeepSpeed's
own full fine-tuning estimate, the FLOPs and wall time at the stated utilisation (mfu), and warnings
when the run will not fit or the batch does not divide. Reads no weights, needs no GPU.
"""

from bg2vec.cli import run_job
from bg2vec.planning import PlanConfig


def main(cfg: PlanConfig) -> str:
    from bg2vec.planning import plan, render

    return render(plan(cfg))


if __name__ == "__main__":
    run_job(PlanConfig, main, __doc__)
