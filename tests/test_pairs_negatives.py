"""Hard-negative mining for the pairs (bg2vec.pairs.negatives): the selection rules on hand-made rankings,
the pairs files rewritten per split with made-up vectors, and the whole run with a tiny encoder (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from bg2vec.embedding.config import IndexConfig
from bg2vec.embedding.index import SearchIndex, build_index
from bg2vec.errors import ConfigError
from bg2vec.pairs import negatives as mining
from bg2vec.pairs.negatives import (
    Candidates,
    NegativesSettings,
    effective_window,
    mine_negatives,
    rank,
    select_negatives,
)

SCHEMA = pa.schema([("query", pa.string()), ("positive", pa.string()), ("kind", pa.string()),
                    ("page_id", pa.int64()), ("negatives", pa.list_(pa.string())), ("instruction", pa.string())])


def one_query(scores, similarity, pages, pair_page=7, positive=0, positive_score=None, excluded=(), wanted=3,
              window=(2, 8), **settings):
    """select_negatives for one query ranked over pool ids 0..n-1 in this order."""
    n = len(scores)
    candidates = Candidates(ids=np.arange(n)[None], scores=np.array([scores], float),
                            similarity_to_positive=np.array([similarity], float),
                            positive_scores=np.array([scores[positive] if positive_score is None else positive_score]))
    return select_negatives(candidates, np.array([positive]), np.array(pages), np.array([pair_page]), [set(excluded)],
                            np.array([wanted]), window, NegativesSettings(**settings))[0]


SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]  # pool id i at rank i; the positive is rank 0


def test_the_first_candidates_of_the_window_in_rank_order():
    similarity = [1.0] + [0.5] * 9
    pages = [7] + [-1] * 9
    assert one_query(SCORES, similarity, pages, wanted=3) == [2, 3, 4]
    assert one_query(SCORES, similarity, pages, wanted=10) == [2, 3, 4, 5, 6, 7]  # ranks 8, 9: outside [2, 8)
    assert one_query(SCORES, similarity, pages, wanted=2, window=(0, 8)) == [1, 2]  # never the positive (rank 0)


def test_page_near_duplicates_false_negatives_and_known_texts_are_skipped():
    similarity = [1.0, 0.5, 0.5, 0.96, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]  # rank 3: a near-duplicate of the positive
    pages = [7, -1, -1, -1, 7, -1, 3, -1, -1, -1]  # rank 4: the positive's page; rank 6: another page
    filters = {"max_similarity_to_positive": 0.95, "positive_margin": 0.95}
    assert one_query(SCORES, similarity, pages, excluded={5}, wanted=3, **filters) == [2, 6, 7]
    assert one_query(SCORES, similarity, pages, excluded={5}, wanted=3,
                     **(filters | {"max_similarity_to_positive": 0.97})) == [2, 3, 6]
    # a user pair (no page): only the positive itself is skipped, not the passages with no page
    assert one_query(SCORES, similarity, pages, pair_page=-1, wanted=3, window=(0, 8), **filters) == [1, 2, 4]
    # positive-aware: scores above 0.95 x the positive's (0.9 x 0.95 = 0.855, then 0.7 x 0.95 = 0.665) are dropped
    high = [0.9, 0.88, 0.86, 0.85, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3]
    assert one_query(high, [0.5] * 10, [-1] * 10, wanted=2, window=(0, 10), **filters) == [3, 4]
    assert one_query(high, [0.5] * 10, [-1] * 10, wanted=2, window=(0, 10), positive=9, positive_score=0.7,
                     **filters) == [4, 5]
    # both filters are off by default: only the window, the positive, its page and known texts count
    assert one_query(high, [0.5] * 10, [-1] * 10, wanted=2, window=(0, 10)) == [1, 2]
    assert one_query(SCORES, similarity, pages, wanted=3) == [2, 3, 5]


def test_several_queries_and_a_short_pool():
    ids = np.array([[3, 1, 0, 2], [2, 0, -1, -1]])  # the second query's pool ends after two passages
    candidates = Candidates(ids=ids, scores=np.array([[.9, .8, .7, .6], [.9, .8, -np.inf, -np.inf]]),
                            similarity_to_positive=np.zeros((2, 4)), positive_scores=np.array([0.6, 0.9]))
    chosen = select_negatives(candidates, np.array([2, 2]), np.full(4, -1), np.array([-1, -1]), [set(), set()],
                              np.array([2, 3]), (0, 4), NegativesSettings(positive_margin=2.0))
    assert chosen == [[3, 1], [0]]


def test_effective_window_scales_to_small_pools():
    assert effective_window([5, 50], 10_000) == (5, 50)
    assert effective_window([5, 50], 50) == (5, 50)
    assert effective_window([5, 50], 30) == (3, 30)
    assert effective_window([10, 50], 12) == (2, 12)
    assert effective_window([5, 50], 4) == (0, 4)


@pytest.mark.parametrize("override, key", [({"rank_window": [10, 5]}, "rank_window"),
                                           ({"rank_window": [3]}, "rank_window"), ({"per_pair": 0}, "per_pair"),
                                           ({"per_pair": 6, "rank_window": [0, 5]}, "per_pair"),
                                           ({"max_similarity_to_positive": 1.5}, "max_similarity_to_positive"),
                                           ({"positive_margin": 0}, "positive_margin")])
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"negatives.{key}"):
        NegativesSettings(**override)


def unit(seed: str, dimension: int = 16) -> np.ndarray:
    rng = np.random.default_rng(int(hashlib.sha1(seed.encode()).hexdigest()[:8], 16))
    vector = rng.normal(size=dimension).astype(np.float32)
    return vector / np.linalg.norm(vector)


def write_vectors(root, vectors: np.ndarray, index: bool) -> dict:
    """An embedding output's vectors/ (and flat float32 index), as bg2vec.embedding.pipeline writes them."""
    fs, path = pafs.LocalFileSystem(), str(root)
    (root / "vectors").mkdir(parents=True)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    pq.write_table(pa.table({"vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}),
                   root / "vectors" / "part.parquet")
    shards = [("part.parquet", len(vectors))]
    if index:
        build_index(fs, path, IndexConfig(precisions=["float32"], kind="flat"), shards, vectors.shape[1],
                    encoder={"model": "test", "instruction": None, "normalize": True})
    return {"shards": [{"name": "part.parquet", "passages": len(vectors)}], "dimension": vectors.shape[1],
            "passages": len(vectors)}


def test_rank_searches_the_index_and_measures_against_the_positive(tmp_path):
    pool = np.stack([unit(f"p{i}") for i in range(12)])
    queries = np.stack([unit(f"q{i}") for i in range(3)])
    write_vectors(tmp_path, pool, index=True)
    positives = np.array([4, 0, 11])
    candidates = rank(SearchIndex(str(tmp_path)), queries, positives, 5)
    order = np.argsort(-(queries @ pool.T), axis=1)[:, :5]
    np.testing.assert_array_equal(candidates.ids, order)
    np.testing.assert_allclose(candidates.scores, np.take_along_axis(queries @ pool.T, order, 1), atol=1e-5)
    np.testing.assert_allclose(candidates.similarity_to_positive, np.einsum("nkd,nd->nk", pool[order], pool[positives]),
                               atol=1e-5)
    np.testing.assert_allclose(candidates.positive_scores, np.sum(queries * pool[positives], 1), atol=1e-5)


def write_pairs(root, split: str, name: str, rows: list[dict], with_negatives: bool = True) -> None:
    folder = root / "pairs" / split
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{"negatives": [], "instruction": None, "page_id": None, "kind": "section"} | r
                                  for r in rows], schema=SCHEMA)
    pq.write_table(table if with_negatives else table.drop(["negatives"]), folder / name)


def made_up_pairs(root) -> None:
    """Train: 4 pages x 5 sections and two user pairs (one with two negatives already, one with one) in two
    files, the second without a negatives column; validation: 2 pages x 4 sections."""
    rows = [{"query": f"страница {p} раздел {s}", "positive": f"текст {p}.{s}", "page_id": p}
            for p in range(4) for s in range(5)]
    write_pairs(root, "train", "part-0.parquet", rows[:10] + [
        {"query": "въпрос", "positive": "отговор", "kind": "user", "negatives": ["грешно 1", "грешно 2"]},
        {"query": "друг въпрос", "positive": "друг отговор", "kind": "user", "negatives": ["грешно 3"],
         "instruction": ""}])
    write_pairs(root, "train", "part-1.parquet", rows[10:], with_negatives=False)
    write_pairs(root, "validation", "part-0.parquet", [
        {"query": f"страница {p} раздел {s}", "positive": f"валидация {p}.{s}", "page_id": p, "instruction": "търси"}
        for p in (10, 11) for s in range(4)])


def fake_vector(text: str, instruction: str | None) -> np.ndarray:
    """Texts with the same numbers (a query and its positive: "страница 1 раздел 2", "текст 1.2") lie close."""
    vector = unit(re.sub(r"\D+", " ", text).strip()) + 0.5 * unit(f"{instruction}|{text}")
    return vector / np.linalg.norm(vector)


def fake_embed(self, what, texts, instruction, index):
    """Embedder.embed with fake_vector's vectors, in the layout the real one writes."""
    calls.append((self.work_uri.rsplit("/", 1)[-1], what, instruction, list(texts)))
    root = tmp_root / f"{what}-{len(calls)}"
    return str(root), write_vectors(root, np.stack([fake_vector(t, instruction) for t in texts]), index)


tmp_root = None
calls: list = []


@pytest.fixture
def fake_embedding(tmp_path, monkeypatch):
    global tmp_root
    tmp_root = tmp_path / "fake-embeddings"
    calls.clear()
    monkeypatch.setattr(mining.Embedder, "embed", fake_embed)
    return calls


def read(root, split):
    return pq.read_table(root / "pairs" / split).to_pylist()


def test_files_gain_negatives_per_split_keeping_the_users(tmp_path, fake_embedding, capsys):
    out = tmp_path / "pairs-dir"
    made_up_pairs(out)
    settings = NegativesSettings(per_pair=2, rank_window=[1, 10], query_instruction="намери")
    entry = mine_negatives(str(out), "some/encoder", settings)
    train, validation = read(out, "train"), read(out, "validation")
    positives = {split: {r["positive"]: r["page_id"] for r in rows} for split, rows in
                 (("train", train), ("validation", validation))}
    for split, rows in (("train", train), ("validation", validation)):
        for r in rows:
            assert len(r["negatives"]) == 2 and len(set(r["negatives"])) == 2
            mined = [n for n in r["negatives"] if not n.startswith("грешно")]
            assert r["positive"] not in mined and r["query"] not in mined
            assert all(n in positives[split] for n in mined)  # only this split's positives: no leak
            assert all(r["page_id"] is None or positives[split][n] != r["page_id"] for n in mined)
    by_query = {r["query"]: r for r in train}
    assert by_query["въпрос"]["negatives"] == ["грешно 1", "грешно 2"]  # already enough: left alone
    assert by_query["друг въпрос"]["negatives"][0] == "грешно 3"  # topped up after the user's own
    assert pq.read_schema(out / "pairs/train/part-1.parquet").names == SCHEMA.names  # negatives before instruction
    # the pool is the split's positives; queries by instruction: null -> query_instruction, "" -> none
    assert [(split, what, instruction, len(texts)) for split, what, instruction, texts in fake_embedding] == [
        ("train", "pool", None, 22), ("train", "queries", "намери", 20), ("train", "queries", None, 1),
        ("validation", "pool", None, 8), ("validation", "queries", "търси", 8)]
    assert entry == entry | {"model": "some/encoder", "rank_window": [1, 10], "per_pair": 2,
                             "pairs_with_negatives": {"train": 22, "validation": 8}, "pairs_short": {"train": 0,
                             "validation": 0}, "pool": {"train": 22, "validation": 8},
                             "mined": {"train": 21, "validation": 8},
                             "effective_rank_window": {"train": [1, 10], "validation": [0, 8]}}
    assert not (out / "negatives_work").exists()
    assert "[pairs] hard negatives for train: 21 of 22 pairs to mine among 22 positives" in capsys.readouterr().out


def test_the_chosen_negatives_are_the_expected_ranks(tmp_path, fake_embedding):
    """Recompute one query's ranking from the made-up vectors: its negatives are the window's first ranks that
    are neither the positive nor of its page."""
    out = tmp_path / "pairs-dir"
    made_up_pairs(out)
    mine_negatives(str(out), "m", NegativesSettings(per_pair=3, rank_window=[2, 15], positive_margin=None,
                                                    max_similarity_to_positive=None))
    train = read(out, "train")
    pool = list(dict.fromkeys(r["positive"] for r in train))
    pages = {r["positive"]: r["page_id"] for r in train}
    pair = train[7]
    order = np.argsort(-(np.stack([fake_vector(p, None) for p in pool]) @ fake_vector(pair["query"], None)))
    ranked = [pool[i] for i in order]
    expected = [p for p in ranked[2:15] if pages[p] != pair["page_id"]][:3]
    assert pair["negatives"] == expected


def test_kinds_limit_the_mined_pairs_and_their_pool(tmp_path, fake_embedding):
    """negatives.kinds=[user]: only the user's pairs are mined, among the user pairs' positives alone."""
    out = tmp_path / "pairs-dir"
    made_up_pairs(out)
    before = {r["query"]: r["negatives"] for r in read(out, "train")}
    entry = mine_negatives(str(out), "m", NegativesSettings(per_pair=2, rank_window=[0, 2], kinds=["user"]))
    train = read(out, "train")
    for r in train:
        if r["kind"] != "user":
            assert r["negatives"] == (before[r["query"]] or [])  # not mined (a file without negatives gains [])
    by_query = {r["query"]: r["negatives"] for r in train}
    assert by_query["въпрос"] == ["грешно 1", "грешно 2"]  # had two already
    assert by_query["друг въпрос"] == ["грешно 3", "отговор"]  # the other user pair's positive, the pool's only other
    assert [(split, what, len(texts)) for split, what, _, texts in fake_embedding] == [("train", "pool", 2),
                                                                                      ("train", "queries", 1)]
    assert entry["pool"] == {"train": 2, "validation": 0} and entry["mined"] == {"train": 1, "validation": 0}
    assert entry["pairs_short"] == {"train": 0, "validation": 0}  # of the user's pairs: the others are not mined


def test_mining_again_changes_nothing(tmp_path, fake_embedding):
    out = tmp_path / "pairs-dir"
    made_up_pairs(out)
    settings = NegativesSettings(per_pair=2, rank_window=[1, 10])
    mine_negatives(str(out), "m", settings)
    first = read(out, "train"), read(out, "validation")
    entry = mine_negatives(str(out), "m", settings)
    assert (read(out, "train"), read(out, "validation")) == first
    assert entry["mined"] == {"train": 0, "validation": 0}
    assert entry["pairs_with_negatives"] == {"train": 22, "validation": 8}


@pytest.mark.slow
def test_mining_with_a_tiny_encoder_resumes_and_matches_bg2vec_encode(sample_encoder, tmp_path):
    """The real embedding (Ray Data actor pool, faiss flat index) in a process of its own, as jobs/pairs.py
    runs it (tests/interrupted_negatives.py): interrupted after the embeddings, with the pool's last shard
    lost, a second call resumes from the other shards; the negatives are those of Bg2Vec.encode's vectors
    ranked by numpy."""
    from interrupted_negatives import SETTINGS as settings

    from bg2vec import Bg2Vec

    out = tmp_path / "pairs-dir"
    made_up_pairs(out)
    shutil.rmtree(out / "pairs" / "validation")  # the splits are apart (above): one is enough here
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "interrupted_negatives.py"), str(out),
                           str(sample_encoder)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    again = done.stdout.split("--- mined again", 1)[1]
    assert "3 shard(s), 2 finished earlier, 1 to do" in again
    entry = json.loads(again.strip().splitlines()[-1])
    assert entry["pairs_with_negatives"] == {"train": 22, "validation": 0}
    assert entry["pairs_short"] == {"train": 0, "validation": 0}
    assert not (out / "negatives_work").exists()

    encoder = Bg2Vec.from_pretrained(sample_encoder)
    for split, instruction in (("train", None),):
        rows = read(out, split)
        pool = list(dict.fromkeys(r["positive"] for r in rows))
        vectors = encoder.encode(pool)
        page = {r["positive"]: -1 if r["page_id"] is None else r["page_id"] for r in rows}
        pages = np.array([page[p] for p in pool])
        mined = [r for r in rows if r["kind"] != "user"]
        queries = encoder.encode([r["query"] for r in mined], instruction=instruction)
        scores = queries @ vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")
        positives = np.array([pool.index(r["positive"]) for r in mined])
        window = effective_window(settings.rank_window, len(pool))
        candidates = Candidates(ids=order, scores=np.take_along_axis(scores, order, 1),
                                similarity_to_positive=np.einsum("nkd,nd->nk", vectors[order], vectors[positives]),
                                positive_scores=scores[np.arange(len(mined)), positives])
        expected = select_negatives(candidates, positives, pages, np.array([page[r["positive"]] for r in mined]),
                                    [set() for _ in mined], np.full(len(mined), 2), window, settings)
        assert [r["negatives"] for r in mined] == [[pool[i] for i in e] for e in expected]
