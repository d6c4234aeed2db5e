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
from bg2vec.data.pipeline import prepare
from bg2vec.storage import child, redact


def main(cfg: PrepareConfig) -> str:
    manifest = prepare(cfg)
    c = manifest["counts"]
    lines = [f"prepared {redact(cfg.output)}:",
             f"  pages: {c['pages_read']} read, {c['pages_kept']} kept "
             f"({c['pages_kept_by_split']['train']} train / {c['pages_kept_by_split']['validation']} validation), "
             f"skipped {c['pages_skipped']}",
             f"  blocks of {manifest['seq_len']} tokens: {c['blocks']}, tokens {c['tokens']}, "
             f"dropped at shard ends {c['dropped_tokens']}"]
    if manifest["salvage"]:
        s = manifest["salvage"]
        lines.append(f"  salvage: {s['ranges_cut_short']} range(s) cut short, about {s['bytes_lost']:,} bytes "
                     f"and {s['partial_pages_lost']} partial page(s) lost: {'; '.join(s['problems'])}")
    lines.append(f"  manifest: {redact(child(cfg.output, 'manifest.json'))}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_job(PrepareConfig, main, __doc__)
