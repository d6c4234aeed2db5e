"""Training pairs for the contrastive stage: (query, positive) pairs mined from a prepared corpus
(title -> lead, headings -> section, lead -> body, Contriever crops, inverse cloze) and/or read from
your own JSON Lines / Parquet files; with model=, hard negatives mined by that encoder.

    # the embedded default, after jobs/prepare_data.py
    python jobs/pairs.py --config configs/tiny/pairs.yaml data=runs/tiny/data output=runs/tiny/pairs

    # your own pairs as well (query, positive, optional negatives and instruction per record)
    python jobs/pairs.py --config configs/tiny/pairs.yaml data=runs/tiny/data output=runs/tiny/pairs \\
        "files=[my-pairs.jsonl]"

    # on a Ray cluster, with hard negatives from the SimCSE encoder
    ray job submit --working-dir . -- python jobs/pairs.py --config configs/gemma3-270m/pairs.yaml \\
        data=s3://my-bucket/bg2vec/bgwiki output=s3://my-bucket/bg2vec/pairs model=s3://my-bucket/bg2vec/simcse

The output directory is complete once its manifest.json exists (pairs per kind and split, drops by reason).
"""

from bg2vec.cli import run_job
from bg2vec.pairs.config import PairsConfig


def main(cfg: PairsConfig) -> str:
    from bg2vec.pairs.pipeline import describe_pairs, mine_pairs

    return describe_pairs(cfg.output, mine_pairs(cfg))


if __name__ == "__main__":
    run_job(PairsConfig, main, __doc__)
