"""Vectors for retrieval: float32, int8 and binary search with faiss (exact and approximate) on EXAMS.

    python bench/retrieval.py                              # about 5 minutes on 2 cores (+1 the first time)
    python bench/retrieval.py --model runs/replicate/simcse    # a trained encoder instead

Task: EXAMS retrieval on the held-out "eval" questions (bg2vec.evaluation.exams; ../shared or
$BG2VEC_SHARED), as the evaluation's EXAMSRetrieval: every paragraph of their answer choices is a
passage, the question with its correct answer is the query, the correct answer's paragraph the
relevant passage. Encoder: packaged:gemma-3-270m (materialised once into ~/.cache/bg2vec/models)
with causal attention and mean pooling (the evaluation's "base: causal-mean"), or --model, a trained
bg2vec directory with its own settings; 128 tokens, float32 on CPU.

The vectors are written as an embedding output (vectors/*.parquet), indexed by jobs/embed.py's code
(bg2vec.embedding.index.build_index: int8 ranges from the corpus's vectors) and searched as
jobs/search.py does (SearchIndex.search): top 10, rescoring 4 x 10 candidates with the float query,
HNSW M=32 efSearch=128, IVF nprobe=16. Sizes are the faiss index files (the rescoring vectors, int8.npy
or binary.npy, are counted separately); queries/s: all queries in one batch on one faiss thread, the
best of at least 5 runs and 0.5 s. Baseline: exact float32 search (faiss IndexFlatIP) in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from bg2vec import Bg2Vec
from bg2vec.embedding.config import IndexConfig
from bg2vec.embedding.index import SearchIndex, build_index
from bg2vec.evaluation.exams import exams_retrieval
from bg2vec.evaluation.metrics import ranking_metrics, retrieval
from bg2vec.modeling.encoder import CONFIG_NAME

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BG2VEC_SHARED", REPO.parent / "shared"))
TOP_K, MULTIPLIER, MAX_LENGTH, BATCH, REPS = 10, 4, 128, 32, 5
# (label, index kind, precision searched, rescored with)
SEARCHES = [("float32, exact", "flat", "float32", "none"), ("float32, HNSW", "hnsw", "float32", "none"),
            ("int8, exact", "flat", "int8", "none"), ("int8, exact + float rescore", "flat", "int8", "int8"),
            ("binary, exact", "flat", "binary", "none"),
            ("binary, exact + float rescore (bits)", "flat", "binary", "binary"),
            ("binary, exact + float rescore (int8)", "flat", "binary", "int8"),
            ("binary, HNSW + float rescore (int8)", "hnsw", "binary", "int8")]


def encoder(model: str) -> tuple[Bg2Vec, str]:
    if (Path(model) / CONFIG_NAME).is_file():
        return Bg2Vec.from_pretrained(model, max_length=MAX_LENGTH, device="cpu"), f"{model} (trained)"
    return (Bg2Vec.from_pretrained(model, bidirectional=False, pooling="mean", max_length=MAX_LENGTH, device="cpu"),
            f"{model}, causal attention, mean pooling")


def indexed(root: Path, vectors: np.ndarray, kind: str) -> tuple[SearchIndex, float]:
    """An embedding output at ``root`` holding ``vectors``, indexed with every precision as ``kind``."""
    (root / "vectors").mkdir(parents=True)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    pq.write_table(pa.table({"id": np.arange(len(vectors)), "passage_index": np.zeros(len(vectors), np.int32),
                             "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}),
                   root / "vectors" / "exams.parquet")
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # build_index's progress lines
        build_index(pafs.LocalFileSystem(), str(root), IndexConfig(["float32", "int8", "binary"], kind),
                    [("exams.parquet", len(vectors))], vectors.shape[1], {"model": "bench", "normalize": True})
    return SearchIndex(str(root)), time.perf_counter() - started


def timed_search(index: SearchIndex, queries: np.ndarray, precision: str, rescore: str) -> tuple[np.ndarray, float]:
    """(ids [queries, TOP_K], queries/s)."""
    times: list[float] = []
    while len(times) < REPS or sum(times) < 0.5:
        started = time.perf_counter()
        _, ids = index.search(queries, TOP_K, precision, rescore, MULTIPLIER)
        times.append(time.perf_counter() - started)
    return ids, len(queries) / min(times)


def overlap(ids: np.ndarray, reference: np.ndarray) -> float:
    """Mean share of the reference's top TOP_K found in ``ids``'s (recall@10 against the reference)."""
    return float(np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(ids.tolist(), reference.tolist())]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="packaged:gemma-3-270m",
                        help="a trained bg2vec directory, or a base LLM used causally with mean pooling")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # one search thread: OpenMP's spinning threads measure the machine's load, not faiss
    queries, corpus, relevant = exams_retrieval(SHARED / "data/eval/exams_bg/dev_bg_with_para.jsonl", "eval")
    model, described = encoder(args.model)
    started = time.perf_counter()
    corpus_vectors = model.encode(corpus, batch_size=BATCH)
    encode_seconds = time.perf_counter() - started
    query_vectors = model.encode(queries, batch_size=BATCH)
    expected = retrieval(query_vectors, corpus_vectors, relevant)["ndcg_at_10"]

    rows, built = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("flat", "hnsw", "ivf"):
            built[kind] = indexed(Path(tmp) / kind, corpus_vectors, kind)
        reference, _ = timed_search(built["flat"][0], query_vectors, "float32", "none")
        for label, kind, precision, rescore in SEARCHES:
            index = built[kind][0]
            ids, qps = timed_search(index, query_vectors, precision, rescore)
            files = index.manifest["files"]
            rows.append((label, ranking_metrics(ids, relevant, (TOP_K,))[f"ndcg_at_{TOP_K}"], overlap(ids, reference),
                         files[f"{precision}.faiss"], files.get(f"{rescore}.npy", 0), qps))
        approximate = []
        for precision in ("float32", "int8", "binary"):
            exact, exact_qps = timed_search(built["flat"][0], query_vectors, precision, "none")
            for kind in ("hnsw", "ivf"):
                ids, qps = timed_search(built[kind][0], query_vectors, precision, "none")
                approximate.append((f"{precision}, {kind.upper()}", overlap(ids, exact), qps, qps / exact_qps))

    print(f"EXAMS retrieval, held-out questions: {len(queries)} queries, {len(corpus)} passages; encoder "
          f"{described}, {corpus_vectors.shape[1]}-d, {MAX_LENGTH} tokens, {len(corpus) / encode_seconds:.1f} "
          f"passages/s on {torch.get_num_threads()} CPU threads; faiss, top {TOP_K}, rescoring {MULTIPLIER} x {TOP_K} "
          f"candidates; the evaluation's own ranking (float64, bg2vec.evaluation.metrics.retrieval): nDCG@10 "
          f"{100 * expected:.2f}\n")
    base = rows[0]
    print(f"  {'search':38s} {'nDCG@10':>8s} {'vs float32':>11s} {'recall@10 vs exact float32':>27s} "
          f"{'index KiB':>10s} {'vs float32':>11s} {'+ rescoring KiB':>16s} {'queries/s':>10s}")
    for label, ndcg, recall, size, rescoring, qps in rows:
        print(f"  {label:38s} {100 * ndcg:8.2f} {ndcg / base[1]:10.3f}x {recall:27.3f} {size / 1024:10.1f} "
              f"{size / base[3]:10.3f}x {rescoring / 1024:16.1f} {qps:10.0f}")
    print(f"\n  {'approximate index':18s} {'recall@10 vs exact (same precision)':>36s} {'queries/s':>10s} "
          f"{'vs exact':>9s}")
    for label, recall, qps, ratio in approximate:
        print(f"  {label:18s} {recall:36.3f} {qps:10.0f} {ratio:8.2f}x")
    print(f"\n  index builds (all three precisions): flat {built['flat'][1]:.2f} s, HNSW {built['hnsw'][1]:.2f} s, "
          f"IVF {built['ivf'][1]:.2f} s (IVF: {built['ivf'][0].manifest['indexes']['float32']['ivf_lists']} lists)")


if __name__ == "__main__":
    main()
