"""SimCSE (stage 2 of LLM2Vec): the MNTP adapter merged into the base, a new LoRA trained with
unsupervised contrastive learning (dropout views, in-batch negatives from all workers), on Ray
Train with DeepSpeed ZeRO-3.

    # the embedded default, after jobs/mntp.py
    python jobs/simcse.py --config configs/tiny/simcse.yaml data=runs/tiny/data \\
        mntp=runs/tiny/mntp output=runs/tiny/simcse

    # BgGPT-7B on a GPU cluster
    ray job submit --working-dir . -- python jobs/simcse.py --config configs/bggpt-7b/simcse.yaml \\
        data=s3://my-bucket/bg2vec/bgwiki mntp=s3://my-bucket/bg2vec/mntp \\
        output=s3://my-bucket/bg2vec/simcse scaling.num_workers=8

The output is the finished encoder: Bg2Vec.from_pretrained(output).
"""

from bg2vec.cli import run_job
from bg2vec.training.config import SimCSEConfig
from bg2vec.training.summary import summarize


def main(cfg: SimCSEConfig) -> str:
    from bg2vec.training.launch import run_stage

    return summarize(run_stage(cfg))


if __name__ == "__main__":
    run_job(SimCSEConfig, main, __doc__)
