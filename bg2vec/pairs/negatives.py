"""Hard negatives for the pairs: each pair's query searched against its split's positives with an encoder.

Per split (train and validation apart: a negative never comes from the other split), the pool is every
distinct positive of that split's pairs files (of the pairs of ``kinds``, when given). The pool and the
queries (with each pair's instruction) are embedded by bg2vec's batch embedding (bg2vec.embedding.pipeline:
Ray Data, an encoder actor pool, one vector per text from its first ``max_tokens`` tokens, resumable by
shard) and the pool indexed with a flat (exact) inner-product faiss index (bg2vec.embedding.index).
Each query takes its ``rank_window[1]`` nearest passages; negatives are the first ``per_pair`` of ranks
[rank_window[0], rank_window[1]) (0-based, counted over the whole ranking) that are none of:

- the positive itself, the query's own text, or a negative the pair already has;
- a passage of the positive's page (same page_id; user pairs, page_id null, skip only the positive);
- a near-duplicate of the positive: cosine to it above ``max_similarity_to_positive``;
- a likely false negative: a score above ``positive_margin`` x the positive's score (NV-Retriever's
  positive-aware "TopK-PercPos" filter, Moreira et al., 2024).

Hardest first (rank order, no sampling): the window's start already skips the likeliest false negatives,
as E5's and BGE's mining do. Pools smaller than ``rank_window[1]`` shrink the window in proportion (see
:func:`effective_window`), so a small corpus still gets negatives from the same part of its ranking.

The work (the pool's and queries' embeddings and index) lives under ``OUTPUT/negatives_work/<split>/`` in
folders named by a hash of what they hold, so a rerun after an interruption resumes from the finished
shards; it is removed once every pairs file has its negatives (each file rewritten atomically).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bg2vec.errors import Bg2VecError, ConfigError
from bg2vec.storage import child, exists, join, redact, resolve, write_bytes_atomic

SPLITS = ("train", "validation")
WORK = "negatives_work"
SHARD_ROWS = 4096  # texts per embedding input file: the unit a resumed run skips
QUERIES_PER_SEARCH = 256  # bounds the candidates' vectors held at once (256 x 50 x 4096 floats: 210 MB)


@dataclass
class NegativesSettings:
    """How hard negatives are mined for the pairs (with ``model=``, the encoder that ranks the passages)."""

    per_pair: int = 1
    """Negatives each pair ends up with (LLM2Vec's supervised stage uses one); a pair that already has
    this many (the user's own) is left as it is, one with fewer is topped up."""
    rank_window: list[int] = field(default_factory=lambda: [5, 50])
    """[lo, hi): the ranks (0-based, in the query's ranking of its split's positives, the positive
    included) negatives are taken from, hardest first. Skipping the top lo avoids most false negatives
    (passages as relevant as the positive). A pool of n < hi passages uses [lo x n // hi, n)."""
    max_similarity_to_positive: float | None = None
    """Skip candidates whose cosine to the positive is above this (e.g. 0.95): near-duplicates of it.
    Empty (the default): off. Thresholds on cosines suit encoders whose similarities are spread out (a
    contrastive-trained one, e5); an MNTP or SimCSE encoder's are compressed near 1 (on the tiny demo every
    pair is above 0.95), and the filter would leave no negatives at all."""
    positive_margin: float | None = None
    """Skip candidates whose score (cosine to the query) is above positive_margin x the positive's score
    (e.g. 0.95; NV-Retriever's positive-aware filter, TopK-PercPos): likely false negatives. Empty (the
    default): off, for the reason above; the rank window's start already skips the likeliest ones."""
    kinds: list[str] = field(default_factory=list)
    """Mine negatives only for pairs of these kinds (e.g. [user]), among those pairs' positives: the pool's
    embedding is most of the cost (every positive once, on one CPU actor about 10 passages of 128 tokens
    a second for a 270M model). Empty: every pair, among all of its split's positives."""
    max_tokens: int = 256
    """Tokens of each text (its beginning) the encoder ranks with: whole passages of a 512-token encoder
    cost 2-4x the time of their first 128-256 tokens, which decide most of the ranking."""
    query_instruction: str = ""
    """Instruction of the queries whose pair's instruction is null (the training stage's default query
    instruction: set the same); empty: none. A pair's own instruction ("" = none) is used as it is."""
    batch_size: int = 64
    """Texts per forward pass of each encoder actor."""
    actors: int | None = None
    """Most encoder actors; empty: one per GPU of the cluster, or 1 on a CPU-only cluster."""
    gpus_per_actor: float | None = None
    """GPUs per encoder actor; empty: 1 when the cluster has GPUs, else 0 (CPU)."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """The encoder's weights and compute: auto is bfloat16 on GPU, float32 on CPU."""

    def __post_init__(self) -> None:
        if len(self.rank_window) != 2 or not 0 <= self.rank_window[0] < self.rank_window[1]:
            raise ConfigError(f"negatives.rank_window must be [lo, hi] with 0 <= lo < hi, got {self.rank_window}")
        if not 1 <= self.per_pair <= self.rank_window[1] - self.rank_window[0]:
            raise ConfigError(f"negatives.per_pair must be between 1 and the rank window's width "
                              f"{self.rank_window[1] - self.rank_window[0]}, got {self.per_pair}")
        if self.max_similarity_to_positive is not None and not -1 <= self.max_similarity_to_positive <= 1:
            raise ConfigError(f"negatives.max_similarity_to_positive is a cosine in [-1, 1], got "
                              f"{self.max_similarity_to_positive}")
        if self.positive_margin is not None and self.positive_margin <= 0:
            raise ConfigError(f"negatives.positive_margin must be > 0, got {self.positive_margin}")
        if self.max_tokens < 8:
            raise ConfigError(f"negatives.max_tokens must be >= 8, got {self.max_tokens}")
        if self.batch_size < 1 or (self.actors is not None and self.actors < 1):
            raise ConfigError("negatives.batch_size and negatives.actors must be >= 1")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"negatives.gpus_per_actor must be >= 0, got {self.gpus_per_actor}")


@dataclass
class Candidates:
    """Each query's ranking: ``[queries, k]`` arrays, best first."""

    ids: np.ndarray
    """Pool ids (-1 past the end of a small pool)."""
    scores: np.ndarray
    """Cosine of each candidate to the query."""
    similarity_to_positive: np.ndarray
    """Cosine of each candidate to the query's positive."""
    positive_scores: np.ndarray
    """``[queries]``: cosine of the positive to the query."""


def effective_window(window: Sequence[int], pool: int) -> tuple[int, int]:
    """The rank window on a pool of ``pool`` passages: as configured when the pool reaches its end, else
    both ends scaled to the pool (the same fraction of the ranking skipped)."""
    lo, hi = window
    return (lo, hi) if pool >= hi else (lo * pool // hi, pool)


def select_negatives(candidates: Candidates, positives: np.ndarray, pages: np.ndarray, pair_pages: np.ndarray,
                     excluded: Sequence[Collection[int]], wanted: np.ndarray, window: tuple[int, int],
                     settings: NegativesSettings) -> list[list[int]]:
    """Pool ids of each query's negatives, in rank order: the first ``wanted[i]`` of ranks ``window`` that
    pass the module's filters. ``positives``: each query's positive (pool id); ``pages``: each pool
    passage's page id and ``pair_pages`` each query's (-1: none); ``excluded``: more pool ids per query
    to skip (its text, its negatives)."""
    ids = candidates.ids
    lo, hi = window
    in_window = np.zeros(ids.shape, dtype=bool)
    in_window[:, lo:hi] = True
    keep = in_window & (ids >= 0) & (ids != positives[:, None])
    if settings.max_similarity_to_positive is not None:
        keep &= candidates.similarity_to_positive <= settings.max_similarity_to_positive
    if settings.positive_margin is not None:
        keep &= candidates.scores <= settings.positive_margin * candidates.positive_scores[:, None]
    same_page = (pages[np.maximum(ids, 0)] == pair_pages[:, None]) & (pair_pages[:, None] >= 0)
    keep &= ~same_page
    chosen = []
    for i in range(len(ids)):
        picked = []
        for pool_id in ids[i][keep[i]]:
            if len(picked) == wanted[i]:
                break
            if int(pool_id) not in excluded[i]:
                picked.append(int(pool_id))
        chosen.append(picked)
    return chosen


def rank(index, queries: np.ndarray, positives: np.ndarray, k: int) -> Candidates:
    """The top ``k`` of an opened bg2vec.embedding.index.SearchIndex (float32) for normalised ``queries``."""
    scores, ids = index.search(queries, k)
    positive_vectors = index.vectors(positives)
    return Candidates(ids=ids, scores=scores,
                      similarity_to_positive=np.einsum("nkd,nd->nk", index.vectors(np.maximum(ids, 0)),
                                                       positive_vectors),
                      positive_scores=np.einsum("nd,nd->n", queries, positive_vectors))


@dataclass
class SplitPairs:
    """One split's pairs files, read whole: ``files[i]`` holds rows ``offsets[i]:offsets[i + 1]``."""

    files: list[str]
    tables: list[pa.Table]
    queries: list[str]
    positives: list[str]
    page_ids: list[int | None]
    negatives: list[list[str]]
    instructions: list[str | None]
    kinds: list[str | None]

    def of_kinds(self, kinds: Collection[str]) -> list[bool]:
        """Which pairs are of ``kinds`` (every pair when it is empty)."""
        return [not kinds or kind in kinds for kind in self.kinds]

    @property
    def offsets(self) -> list[int]:
        return np.cumsum([0] + [t.num_rows for t in self.tables]).tolist()


def read_split(fs: pafs.FileSystem, folder: str) -> SplitPairs:
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                   if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    pairs = SplitPairs(files, [], [], [], [], [], [], [])
    for path in files:
        table = pq.read_table(path, filesystem=fs)
        for column in ("query", "positive"):
            if column not in table.column_names:
                raise Bg2VecError(f"pairs file {path} has no column {column!r}; it is not a bg2vec pairs file")
            texts = table.column(column).to_pylist()
            blank = next((i for i, t in enumerate(texts) if t is None or not t.strip()), None)
            if blank is not None:
                raise Bg2VecError(f"pairs file {path}, row {blank}: the {column} is empty; drop that pair")
        rows = table.num_rows
        pairs.tables.append(table)
        pairs.queries += table.column("query").to_pylist()
        pairs.positives += table.column("positive").to_pylist()
        pairs.page_ids += table.column("page_id").to_pylist() if "page_id" in table.column_names else [None] * rows
        pairs.negatives += ([n or [] for n in table.column("negatives").to_pylist()]
                            if "negatives" in table.column_names else [[] for _ in range(rows)])
        pairs.instructions += (table.column("instruction").to_pylist() if "instruction" in table.column_names
                               else [None] * rows)
        pairs.kinds += table.column("kind").to_pylist() if "kind" in table.column_names else [None] * rows
    return pairs


def write_split(fs: pafs.FileSystem, pairs: SplitPairs, negatives: list[list[str]]) -> None:
    """Rewrite (atomically) each file whose pairs gained negatives, negatives before instruction."""
    offsets = pairs.offsets
    for i, (path, table) in enumerate(zip(pairs.files, pairs.tables)):
        new = negatives[offsets[i]:offsets[i + 1]]
        if new == pairs.negatives[offsets[i]:offsets[i + 1]] and "negatives" in table.column_names:
            continue
        column = pa.array(new, pa.list_(pa.string()))
        if "negatives" in table.column_names:
            table = table.set_column(table.column_names.index("negatives"), "negatives", column)
        else:
            at = table.column_names.index("instruction") if "instruction" in table.column_names else table.num_columns
            table = table.add_column(at, "negatives", column)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_bytes_atomic(fs, path, sink.getvalue().to_pybytes())


def _digest(*parts) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(json.dumps(part, ensure_ascii=False).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class Embedder:
    """bg2vec's batch embedding of lists of texts into folders of one split's work area."""

    def __init__(self, fs: pafs.FileSystem, work_uri: str, model: str, settings: NegativesSettings):
        self.fs, self.work_uri, self.model, self.settings = fs, work_uri, model, settings
        self.used: set[str] = set()

    def embed(self, what: str, texts: list[str], instruction: str | None, index: bool) -> tuple[str, dict]:
        """(the embedding output's URI, its manifest); row i of its vectors is text i."""
        from bg2vec.embedding.config import EmbedConfig, IndexConfig
        from bg2vec.embedding.pipeline import embed

        s = self.settings
        name = f"{what}-{_digest(redact(self.model), s.dtype, s.max_tokens, instruction, texts)}"
        self.used.add(name)
        folder = child(self.work_uri, name)
        fs, path = resolve(folder)
        for n, start in enumerate(range(0, len(texts), SHARD_ROWS)):  # deterministic: a rerun rewrites nothing
            shard = join(path, "input", f"part-{n:05d}.parquet")
            if not exists(fs, shard):
                sink = pa.BufferOutputStream()
                pq.write_table(pa.table({"id": pa.array(range(start, start + len(texts[start:start + SHARD_ROWS])),
                                                        pa.int64()),
                                         "text": texts[start:start + SHARD_ROWS]}), sink)
                write_bytes_atomic(fs, shard, sink.getvalue().to_pybytes())
        cfg = EmbedConfig(model=self.model, input=child(folder, "input"), output=child(folder, "embedding"),
                          title_column=None, whole_documents=True, passage_tokens=s.max_tokens,
                          instruction=instruction or None,
                          batch_size=s.batch_size, actors=s.actors, gpus_per_actor=s.gpus_per_actor, dtype=s.dtype,
                          progress=False, index=IndexConfig(precisions=["float32"] if index else [], kind="flat"))
        manifest = embed(cfg)
        if manifest["passages"] != len(texts):
            raise Bg2VecError(f"embedding {what} gave {manifest['passages']} vectors for {len(texts)} texts: some "
                              f"text has no token the encoder's tokenizer keeps; drop those pairs")
        return cfg.output, manifest

    def drop_unused(self) -> None:
        """Remove the split's work folders that this run did not use (from other pairs or another model)."""
        _, path = resolve(self.work_uri)
        for info in self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            if info.base_name not in self.used:
                (self.fs.delete_dir if info.type == pafs.FileType.Directory else self.fs.delete_file)(info.path)


def query_vectors(fs: pafs.FileSystem, uri: str, manifest: dict):
    """(row offset, vectors) of each shard of an embedding output, in order."""
    _, path = resolve(uri)
    start = 0
    for shard in manifest["shards"]:
        if shard["passages"]:
            column = pq.read_table(join(path, "vectors", shard["name"]), columns=["vector"],
                                   filesystem=fs).column("vector").combine_chunks()
            yield start, column.flatten().to_numpy().reshape(shard["passages"], manifest["dimension"])
        start += shard["passages"]


def mine_split(fs: pafs.FileSystem, work_uri: str, model: str, pairs: SplitPairs, settings: NegativesSettings,
               split: str) -> tuple[list[list[str]], dict]:
    """Every pair's negatives (kept ones first, then mined ones) and the split's counts."""
    from bg2vec.embedding.index import SearchIndex

    chosen = pairs.of_kinds(settings.kinds)
    pool: dict[str, int] = {}
    pages_of: dict[int, set[int]] = {}
    for text, page, included in zip(pairs.positives, pairs.page_ids, chosen):
        if not included:
            continue
        pool_id = pool.setdefault(text, len(pool))
        if page is not None:
            pages_of.setdefault(pool_id, set()).add(page)
    page_of = np.array([min(pages_of.get(p, {-1})) for p in range(len(pool))], dtype=np.int64)
    elsewhere: dict[int, set[int]] = {}  # page -> its passages that are in other pages too (page_of holds one)
    for pool_id, pages in pages_of.items():
        for page in pages if len(pages) > 1 else ():
            elsewhere.setdefault(page, set()).add(pool_id)
    texts_of = list(pool)
    todo = [i for i, n in enumerate(pairs.negatives) if len(n) < settings.per_pair and chosen[i]]
    window = effective_window(settings.rank_window, len(pool))
    counts = {"pairs": len(pairs.queries), "pool": len(pool), "mined": len(todo), "rank_window": list(window)}
    print(f"[pairs] hard negatives for {split}: {len(todo)} of {len(pairs.queries)} pairs to mine among "
          f"{len(pool)} positives, ranks [{window[0]}, {window[1]}), {settings.per_pair} per pair", flush=True)
    negatives = [list(n) for n in pairs.negatives]
    if not todo or window[0] >= window[1]:
        return negatives, counts
    embedder = Embedder(fs, work_uri, model, settings)
    pool_uri, _ = embedder.embed("pool", texts_of, None, index=True)
    index = SearchIndex(pool_uri)
    groups: dict[str | None, dict[str, list[int]]] = {}  # instruction -> query text -> its pairs
    for i in todo:
        instruction = settings.query_instruction if pairs.instructions[i] is None else pairs.instructions[i]
        groups.setdefault(instruction or None, {}).setdefault(pairs.queries[i], []).append(i)
    for instruction, by_text in groups.items():
        texts = list(by_text)
        uri, manifest = embedder.embed("queries", texts, instruction, index=False)
        for start, vectors in query_vectors(fs, uri, manifest):
            rows = [(q, i) for q in range(start, start + len(vectors)) for i in by_text[texts[q]]]
            for b in range(0, len(rows), QUERIES_PER_SEARCH):
                batch = rows[b:b + QUERIES_PER_SEARCH]
                pair_ids = [i for _, i in batch]
                positives = np.array([pool[pairs.positives[i]] for i in pair_ids], dtype=np.int64)
                pair_pages = np.array([-1 if pairs.page_ids[i] is None else pairs.page_ids[i] for i in pair_ids],
                                      dtype=np.int64)
                excluded = [{pool[t] for t in (pairs.queries[i], *negatives[i]) if t in pool}
                            | elsewhere.get(pairs.page_ids[i], set()) for i in pair_ids]
                wanted = np.array([settings.per_pair - len(negatives[i]) for i in pair_ids])
                candidates = rank(index, vectors[[q - start for q, _ in batch]], positives, window[1])
                chosen = select_negatives(candidates, positives, page_of, pair_pages, excluded, wanted, window,
                                          settings)
                for i, picked in zip(pair_ids, chosen):
                    negatives[i] += [texts_of[p] for p in picked]
    embedder.drop_unused()
    return negatives, counts


def mine_negatives(output: str, model: str, settings: NegativesSettings) -> dict:
    """Add hard negatives to the pairs files under ``output/pairs/`` in place; returns the pairs manifest's
    ``negatives`` entry."""
    started = time.perf_counter()
    fs, root = resolve(output)
    per_split = {}
    for split in SPLITS:
        pairs = read_split(fs, join(root, "pairs", split))
        negatives, counts = mine_split(fs, child(output, WORK, split), model, pairs, settings, split)
        write_split(fs, pairs, negatives)
        counts["pairs_with_negatives"] = sum(1 for n in negatives if n)
        counts["pairs_short"] = sum(1 for n, mined in zip(negatives, pairs.of_kinds(settings.kinds))
                                    if mined and len(n) < settings.per_pair)
        per_split[split] = counts
        print(f"[pairs] {split}: {counts['pairs_with_negatives']} of {counts['pairs']} pairs have negatives, "
              f"{counts['pairs_short']} fewer than {settings.per_pair} (their window ran out)", flush=True)
    if exists(fs, join(root, WORK)):
        fs.delete_dir(join(root, WORK))
    entry = {"model": redact(model), "rank_window": list(settings.rank_window), "per_pair": settings.per_pair,
             "max_similarity_to_positive": settings.max_similarity_to_positive,
             "positive_margin": settings.positive_margin, "query_instruction": settings.query_instruction}
    for key in ("pairs_with_negatives", "pairs_short", "pool", "mined", "rank_window"):
        entry["effective_rank_window" if key == "rank_window" else key] = {s: c[key] for s, c in per_split.items()}
    return entry | {"seconds": round(time.perf_counter() - started, 2)}
