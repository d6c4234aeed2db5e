"""Embed a corpus for retrieval (RAG): passages of every document, encoded by an actor pool, as Parquet.

    # the embedded default: the tiny pipeline's encoder on the sample dump's pages (CPU)
    python jobs/embed.py --config configs/tiny/embed.yaml model=runs/demo/simcse input=runs/demo/data \\
        output=runs/demo/embeddings

    # a trained BgGPT encoder on a GPU cluster: one actor per GPU, vectors to S3
    ray job submit --working-dir . -- python jobs/embed.py --config configs/bggpt-7b/embed.yaml \\
        model=/mnt/models/bg2vec-7b input=s3://my-bucket/bgwiki/pages output=s3://my-bucket/bgwiki/vectors

    # also int8 and binary vectors and a faiss index of each (HNSW whatever the size), for jobs/search.py
    python jobs/embed.py --config configs/tiny/embed.yaml model=runs/demo/simcse input=runs/demo/data \
        output=runs/demo/embeddings "index.precisions=[float32,int8,binary]" index.kind=hnsw

Writes output/vectors/<shard>.parquet (id, passage_index, title, passage, char_start, char_end, vector)
per input file, then the index (output/index/, with index.precisions) and, last, output/manifest.json.
Run it again after an interruption: finished shards and index files are skipped; other index settings
on a finished output rebuild only the index.
"""

from bg2vec.cli import run_job
from bg2vec.embedding.config import EmbedConfig


def main(cfg: EmbedConfig) -> str:
    from bg2vec.embedding.index import describe
    from bg2vec.embedding.pipeline import embed
    from bg2vec.storage import redact

    manifest = embed(cfg)
    run, index = manifest["this_run"], manifest["index"]
    if manifest["already_complete"]:
        return f"{redact(cfg.output)} is already complete ({manifest['passages']} passages); nothing to do"
    indexed = (f"; index: {describe(index['indexes'])}, "
               f"{index['bytes'] / 2**20:.1f} MiB in {redact(cfg.output)}/index" if index else "")
    return (f"embedded {manifest['passages']} passages of {len(manifest['shards'])} shard(s) into "
            f"{redact(cfg.output)} (dimension {manifest['dimension']}); this run: {run['shards']} shard(s), "
            f"{run['passages']} passages in {run['seconds']:.1f} s = {run['passages_per_s']:.1f} passages/s, "
            f"{run['tokens_per_s']:.0f} tokens/s ({manifest['skipped']} shard(s) finished earlier){indexed}")


if __name__ == "__main__":
    run_job(EmbedConfig, main, __doc__)
