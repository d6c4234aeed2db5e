"""The contrastive-pairs stage (stage 3 of LLM2Vec): the MNTP adapter (or MNTP + SimCSE) merged, a new
LoRA trained on (query, positive, hard negatives) pairs from jobs/pairs.py, every query against all
positives and negatives of the global batch (optionally a Matryoshka loss), on Ray Train with DeepSpeed.

    # the embedded default, after jobs/mntp.py and jobs/pairs.py
    python jobs/contrastive.py --config configs/tiny/contrastive.yaml pairs=runs/tiny/pairs \\
        mntp=runs/tiny/mntp output=runs/tiny/contrastive

    # from the SimCSE encoder instead of MNTP
    python jobs/contrastive.py --config configs/tiny/contrastive.yaml pairs=runs/tiny/pairs \\
        mntp=null simcse=runs/tiny/simcse output=runs/tiny/contrastive

    # BgGPT-7B on a GPU cluster
    ray job submit --working-dir . -- python jobs/contrastive.py --config configs/gemma3-270m/contrastive.yaml \\
        pairs=s3://my-bucket/bg2vec/pairs mntp=s3://my-bucket/bg2vec/mntp \\
        output=s3://my-bucket/bg2vec/contrastive scaling.use_gpu=true scaling.num_workers=8

The output is the finished encoder: Bg2Vec.from_pretrained(output); queries go with
encode(..., instruction=<its prompts["query"]>), passages without.
"""

from bg2vec.cli import run_job
from bg2vec.training.config import ContrastiveConfig
from bg2vec.training.summary import summarize


def main(cfg: ContrastiveConfig) -> str:
    from bg2vec.training.launch import run_stage

    return summarize(run_stage(cfg))


if __name__ == "__main__":
    run_job(ContrastiveConfig, main, __doc__)
