"""Search an embedded and indexed corpus: the top passages for a query, with their titles and scores.

    # the demo's corpus (make demo embeds and indexes the sample dump's pages into runs/demo/embeddings)
    python jobs/search.py --config configs/tiny/search.yaml "Кой е бил цар на България?"

    # any output of jobs/embed.py built with index.precisions=[...]: binary search rescored with int8
    python jobs/search.py --config configs/tiny/search.yaml index=runs/bgwiki/embeddings precision=binary \\
        top_k=20 "столицата на България"

The arguments that are not key=value are the query. The query is encoded by the encoder that embedded
the corpus (saved in OUTPUT/index/manifest.json; model= to use another folder of the same one);
int8 queries are quantized with the corpus's saved ranges.
"""

from bg2vec.cli import run_job
from bg2vec.embedding.config import SearchConfig


def main(cfg: SearchConfig) -> str:
    from bg2vec.embedding.search import search

    return search(cfg)


if __name__ == "__main__":
    run_job(SearchConfig, main, __doc__, text_key="query")
