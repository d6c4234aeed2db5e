"""Prepare a Wikipedia dump for training: clean pages and packed token blocks, as Parquet.

    # the embedded default: the project's own Bulgarian sample dump, a tokenizer trained on it
    python jobs/prepare_data.py --config configs/tiny/prepare.yaml output=runs/tiny/data

    # the real thing, on a Ray cluster (downloads, verifies and reads the multistream dump in parallel)
    ray job submit --working-dir . -- python jobs/prepare_data.py \\
        --config configs/bggpt-7b/prepare.yaml output=s3://my-bucket/bg2vec/bgwiki

    # a dump you already have; keep what is readable from a truncated one
    python jobs/prepare_data.py --config configs/bggpt-7b/prepare.yaml \\
        dump=bgwiki-latest-pages-articles.xml.bz2 output=runs/bgwiki salvage=true

The output directory is complete once its manifest.json exists (counts, sources, config).
"""

from bg2vec.cli import run_job
from bg2vec.data.config import PrepareConfig
from bg2vec.data.pipeline import describe_prepared, prepare


def main(cfg: PrepareConfig) -> str:
    return describe_prepared(cfg.output, prepare(cfg))


if __name__ == "__main__":
    run_job(PrepareConfig, main, __doc__)
