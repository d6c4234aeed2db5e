"""MNTP (stage 1 of LLM2Vec): bidirectional attention + masked next-token prediction, LoRA, on
Ray Train with DeepSpeed ZeRO-3.

    # the embedded default: a tiny random Mistral on the sample data, 2 CPU workers, a few minutes
    python jobs/mntp.py --config configs/tiny/mntp.yaml data=runs/tiny/data output=runs/tiny/mntp

    # BgGPT-7B on a GPU cluster (reference hyperparameters; 8 workers = 8 GPUs)
    ray job submit --working-dir . -- python jobs/mntp.py --config configs/bggpt-7b/mntp.yaml \\
        data=s3://my-bucket/bg2vec/bgwiki output=s3://my-bucket/bg2vec/mntp scaling.num_workers=8

Starting it again with the same output (or run.name) resumes from the last checkpoint.
"""

from bg2vec.cli import run_job
from bg2vec.training.config import MNTPConfig
from bg2vec.training.summary import summarize


def main(cfg: MNTPConfig) -> str:
    from bg2vec.training.launch import run_stage

    return summarize(run_stage(cfg))


if __name__ == "__main__":
    run_job(MNTPConfig, main, __doc__)
