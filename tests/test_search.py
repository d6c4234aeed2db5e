"""Vectors for retrieval: int8/binary vectors equal sentence-transformers' quantize_embeddings, the faiss
indexes search as brute force does, an index built by jobs/embed.py maps back to its passages and resumes,
and jobs/search.py prints the top passages or a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from sentence_transformers.util.quantization import _dequantize_embeddings, quantize_embeddings, semantic_search_faiss

from bg2vec import Bg2Vec
from bg2vec.config import load_config
from bg2vec.data.tokens.tokenization import train_bpe_tokenizer
from bg2vec.embedding.config import EmbedConfig, IndexConfig, SearchConfig
from bg2vec.embedding.index import SearchIndex, build_index
from bg2vec.embedding.pipeline import embed
from bg2vec.embedding.quantization import (
    calibration_ranges,
    dot_dequantized_int8,
    quantize_binary,
    quantize_int8,
    unpack_binary,
)
from bg2vec.embedding.search import search
from bg2vec.errors import Bg2VecError
from conftest import REPO, write_trained_encoder

DIM, TOP_K, MULTIPLIER = 44, 10, 4  # 44: the bits do not fill whole bytes


def unit_vectors(rng, n: int, centers: int = 0) -> np.ndarray:
    """Random unit vectors; with ``centers``, clustered around that many (as real embeddings are)."""
    x = rng.standard_normal((n, DIM))
    if centers:
        x = rng.standard_normal((centers, DIM))[rng.integers(0, centers, n)] * 2 + x
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def indexed(root, vectors: np.ndarray, kind: str = "flat", shard_sizes=None,
            precisions=("float32", "int8", "binary"), model: str = "m") -> SearchIndex:
    """``vectors`` as an embedding output at ``root`` (shards of ``shard_sizes`` rows) of encoder ``model``,
    indexed as ``kind``."""
    sizes = shard_sizes or [len(vectors)]
    (root / "vectors").mkdir(parents=True)
    start = 0
    for i, n in enumerate(sizes):
        part = vectors[start:start + n]
        pq.write_table(pa.table({
            "id": np.arange(start, start + n), "passage_index": np.zeros(n, np.int32),
            "title": [f"title {j}" for j in range(start, start + n)], "passage": [f"passage {j}" for j in
                                                                                 range(start, start + n)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1), pa.float32()), vectors.shape[1])}),
            root / "vectors" / f"s{i}.parquet", row_group_size=16)
        start += n
    build_index(pafs.LocalFileSystem(), str(root), IndexConfig(list(precisions), kind),
                [(f"s{i}.parquet", n) for i, n in enumerate(sizes)], vectors.shape[1],
                {"model": model, "normalize": True})
    return SearchIndex(str(root))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 unit vectors in three shards (the middle one empty), indexed flat; 20 queries."""
    rng = np.random.default_rng(0)
    vectors, queries = unit_vectors(rng, 300), unit_vectors(rng, 20)
    return indexed(tmp_path_factory.mktemp("flat"), vectors, shard_sizes=[130, 0, 170]), vectors, queries


def assert_top_k(scores: np.ndarray, ids: np.ndarray, reference: np.ndarray):
    """``(scores, ids)`` are a best-first top k of ``reference`` [queries, corpus] (any order among ties)."""
    expected = -np.sort(-reference, axis=1)[:, :scores.shape[1]]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(reference, ids, 1), scores, rtol=1e-6)
    assert all(len(set(row)) == len(row) for row in ids.tolist())


def test_quantized_vectors_equal_sentence_transformers():
    rng = np.random.default_rng(1)
    corpus, queries = unit_vectors(rng, 200), unit_vectors(rng, 30) * 1.5  # queries outside the corpus's ranges
    ranges = calibration_ranges(corpus)
    np.testing.assert_array_equal(quantize_int8(corpus, ranges), quantize_embeddings(corpus, "int8"))
    np.testing.assert_array_equal(quantize_int8(queries, ranges), quantize_embeddings(queries, "int8", ranges=ranges))
    candidates = quantize_int8(corpus, ranges)[np.arange(60).reshape(30, 2)]  # two per query
    np.testing.assert_allclose(dot_dequantized_int8(queries, candidates, ranges), np.einsum(
        "ij,ikj->ik", queries, _dequantize_embeddings(candidates, "int8", ranges)), rtol=1e-12)
    bits = quantize_binary(corpus)
    assert bits.shape == (200, 6)
    np.testing.assert_array_equal(bits, quantize_embeddings(corpus, "ubinary"))
    np.testing.assert_array_equal(unpack_binary(bits, DIM), corpus > 0)


def test_exact_searches_equal_brute_force(corpus):
    index, vectors, queries = corpus
    scores, ids = index.search(queries, TOP_K, "float32")
    assert_top_k(scores, ids, queries.astype(np.float64) @ vectors.T)

    int8 = quantize_int8(vectors, index.ranges).astype(np.int64)
    scores, ids = index.search(queries, TOP_K, "int8")
    assert_top_k(scores, ids, (quantize_int8(queries, index.ranges).astype(np.int64) @ int8.T).astype(np.float64))

    hamming = (unpack_binary(quantize_binary(queries), DIM)[:, None, :]
               != unpack_binary(quantize_binary(vectors), DIM)[None, :, :]).sum(-1)
    scores, ids = index.search(queries, TOP_K, "binary")
    assert_top_k(scores, ids, 1 - 2 * hamming / DIM)


def test_rescored_searches_equal_the_references(corpus):
    index, vectors, queries = corpus
    theirs, _ = semantic_search_faiss(queries, corpus_embeddings=quantize_binary(vectors), corpus_precision="ubinary",
                                      top_k=TOP_K, rescore=True, rescore_multiplier=MULTIPLIER)
    scores, ids = index.search(queries, TOP_K, "binary", "binary", MULTIPLIER)
    assert ids.tolist() == [[hit["corpus_id"] for hit in hits] for hits in theirs]
    np.testing.assert_allclose(scores, [[hit["score"] for hit in hits] for hits in theirs], rtol=1e-6)

    codes = quantize_int8(vectors, index.ranges)
    first = quantize_int8(queries, index.ranges).astype(np.int64) @ codes.astype(np.int64).T
    ranked = np.argsort(-first, axis=1, kind="stable")
    boundary = np.take_along_axis(first, ranked[:, TOP_K * MULTIPLIER - 1:TOP_K * MULTIPLIER + 1], 1)
    unique = boundary[:, 0] > boundary[:, 1]  # no tie at the cut: the candidates are the same whatever the order
    assert unique.sum() >= 15
    candidates = ranked[unique, :TOP_K * MULTIPLIER]
    rescored = np.einsum("ij,ikj->ik", queries[unique], _dequantize_embeddings(codes[candidates], "int8", index.ranges))
    order = np.argsort(-rescored, axis=1)[:, :TOP_K]
    scores, ids = index.search(queries[unique], TOP_K, "int8", "int8", MULTIPLIER)
    assert ids.tolist() == np.take_along_axis(candidates, order, 1).tolist()
    np.testing.assert_allclose(scores, np.take_along_axis(rescored, order, 1), rtol=1e-6)


def test_ids_map_back_to_the_rows_of_their_shards(corpus):
    index, _, _ = corpus
    rows = index.passages([0, 129, 130, 299, 129])
    assert [(r["id"], r["title"], r["passage"]) for r in rows] == [
        (i, f"title {i}", f"passage {i}") for i in (0, 129, 130, 299, 129)]
    with pytest.raises(Bg2VecError, match="passage 300 is not in the index"):
        index.passages([300])


def test_what_the_index_lacks_is_named(tmp_path):
    index = indexed(tmp_path, unit_vectors(np.random.default_rng(3), 20), precisions=["binary"])
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "binary.faiss", "binary.npy", "manifest.json", "settings.json"]
    with pytest.raises(Bg2VecError, match="the index has no float32 vectors \\(it has binary\\)"):
        index.search(np.zeros((1, DIM)), TOP_K, "float32")
    with pytest.raises(Bg2VecError, match="cannot rescore with int8 vectors: the index has none"):
        index.search(np.zeros((1, DIM)), TOP_K, "binary", "int8")
    scores, ids = index.search(np.ones((1, DIM)), 30, "binary")  # more than the corpus holds
    assert sorted(ids[0, :20]) == list(range(20)) and (ids[0, 20:] == -1).all() and np.isinf(scores[0, 20:]).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall_what_exact_search_finds(kind, tmp_path):
    rng = np.random.default_rng(2)
    vectors, queries = unit_vectors(rng, 2000, centers=40), unit_vectors(rng, 50, centers=40)
    exact, approximate = indexed(tmp_path / "flat", vectors), indexed(tmp_path / kind, vectors, kind)
    assert approximate.manifest["indexes"]["float32"]["kind"] == kind
    for precision in ("float32", "int8", "binary"):
        truth, _ = exact.search(queries, TOP_K, precision)
        found, _ = approximate.search(queries, TOP_K, precision)
        # the share of the results scoring at least the exact k-th best (robust to ties at the cut)
        recall = float(np.mean(found >= truth[:, -1:] - 1e-6))
        assert recall >= 0.9, (precision, recall)


@pytest.fixture(scope="module")
def embedded(prepared_sample, sample_encoder, tmp_path_factory):
    """A third of the sample dump's pages, in two shards, embedded by a tiny encoder with configs/tiny/embed.yaml's
    index (float32, int8 and binary, flat); (output, the pages, the embed config's overrides)."""
    root = tmp_path_factory.mktemp("search")
    pages = pq.read_table(prepared_sample / "pages").sort_by("id")
    pages = pages.take(np.arange(0, pages.num_rows, 3))
    (root / "corpus").mkdir()
    for i, part in enumerate(np.array_split(np.arange(pages.num_rows), 2)):
        pq.write_table(pages.take(part), root / "corpus" / f"pages-{i}.parquet")
    overrides = [f"model={sample_encoder}", f"input={root / 'corpus'}", "passage_tokens=40", "overlap_tokens=8",
                 "batch_size=8", "progress=false"]
    # the job in a process of its own, as users run it (an in-process Ray Data actor pool late in a long test
    # session once never came up)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "jobs/embed.py", "--config", "configs/tiny/embed.yaml", *overrides,
                           f"output={root / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "out", pages, overrides


@pytest.mark.slow
def test_the_embed_job_indexes_its_vectors_and_ids_map_back_to_them(embedded):
    out, pages, _ = embedded
    vectors = pq.read_table(out / "vectors")
    floats = np.stack(vectors.column("vector").to_numpy(zero_copy_only=False))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["indexes"] == {p: {"file": f"{p}.faiss", "kind": "flat"}
                                           for p in ("float32", "int8", "binary")}
    quantization = json.loads((out / "index" / "quantization.json").read_text())
    np.testing.assert_array_equal(np.asarray(quantization["ranges"], np.float32), calibration_ranges(floats))
    np.testing.assert_array_equal(np.load(out / "index" / "int8.npy"), quantize_embeddings(floats, "int8"))
    np.testing.assert_array_equal(np.load(out / "index" / "binary.npy"), quantize_embeddings(floats, "ubinary"))

    index = SearchIndex(str(out / "index"))  # the index folder works as well as the output
    titles = dict(zip(pages.column("id").to_pylist(), pages.column("title").to_pylist()))
    chosen = [0, 7, vectors.num_rows // 2, vectors.num_rows - 1]
    _, ids = index.search(floats[chosen], 1, "float32")
    assert ids[:, 0].tolist() == chosen  # a passage's own vector finds it, across both shards
    for row, i in zip(index.passages(chosen), chosen):
        expected = vectors.slice(i, 1).to_pylist()[0]
        assert row == {k: expected[k] for k in ("id", "passage_index", "title", "passage")}
        assert row["title"] == titles[row["id"]]  # the page's title, carried into its passages


@pytest.mark.slow
def test_an_interrupted_index_build_completes_and_a_complete_one_is_left_alone(embedded, tmp_path, capsys):
    source, _, overrides = embedded
    out = tmp_path / "out"
    shutil.copytree(source, out)
    cfg = load_config(EmbedConfig, str(REPO / "configs/tiny/embed.yaml"), [*overrides, f"output={out}"])
    index = out / "index"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in index.iterdir()}
    for name in ("manifest.json", "binary.faiss"):  # as if the build had stopped before binary.faiss
        (index / name).unlink()
    (out / "manifest.json").unlink()
    (index / "binary.faiss.tmp-0123").write_bytes(b"half")
    resumed = embed(cfg)
    assert not resumed["already_complete"] and resumed["skipped"] == 2 and resumed["this_run"]["shards"] == 0
    printed = capsys.readouterr().out
    assert "index/binary.faiss: flat" in printed and "int8.npy" not in printed and "float32.faiss" not in printed
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in index.iterdir()}
    assert set(after) == set(before)  # the unfinished temporary file is gone
    assert after["binary.faiss"][1] == before["binary.faiss"][1]
    assert all(after[n] == before[n] for n in before if n not in ("binary.faiss", "manifest.json"))

    again = embed(cfg)  # complete: nothing is read or written
    assert again["already_complete"]
    assert {p.name: p.stat().st_mtime_ns for p in index.iterdir()} == {n: t for n, (t, _) in after.items()}

    hnsw = embed(load_config(EmbedConfig, str(REPO / "configs/tiny/embed.yaml"),
                             [*overrides, f"output={out}", "index.kind=hnsw"]))  # only the faiss files change
    assert {p: i["kind"] for p, i in hnsw["index"]["indexes"].items()} == dict.fromkeys(
        ("float32", "int8", "binary"), "hnsw")
    for name in ("quantization.json", "int8.npy", "binary.npy"):
        assert (index / name).stat().st_mtime_ns == after[name][0]
    assert json.loads((index / "manifest.json").read_text())["indexes"]["binary"]["hnsw_m"] == 32


def search_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/search.py", "--config", "configs/tiny/search.yaml", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_the_search_job_prints_the_top_passages_with_title_and_score(embedded):
    out, _, _ = embedded
    rows = pq.read_table(out / "vectors", columns=["id", "passage_index", "title", "passage"]).to_pylist()
    target = rows[5]
    done = search_job(f"index={out}", "top_k=3", target["passage"])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("top 3 of "))
    assert f"top 3 of {len(rows)} passages for" in lines[header] and "(float32 flat index" in lines[header]
    hits = lines[header + 1::2]
    assert len(hits) == 3
    # the passage's own text finds it first, with its title and a cosine of 1
    assert hits[0] == f"  1. 1.0000  {target['title']}  (id {target['id']}, passage {target['passage_index']})"
    scores = [float(hit.split()[1]) for hit in hits]
    assert scores == sorted(scores, reverse=True)

    binary = search(load_config(SearchConfig, str(REPO / "configs/tiny/search.yaml"), [
        f"index={out}", "precision=binary", "top_k=2", f"query={target['passage']}"])).splitlines()
    assert binary[0].startswith("top 2 of ") and "(binary flat index, rescored with int8 x4, " in binary[0]
    assert f"(id {target['id']}, passage {target['passage_index']})" in binary[1]  # rescored: still the passage


@pytest.mark.slow
def test_the_search_job_names_bad_input(embedded, tmp_path):
    out, _, _ = embedded
    missing = search_job(f"index={tmp_path / 'nowhere'}", "София")
    assert missing.returncode == 1 and f"index {tmp_path / 'nowhere'} does not exist" in missing.stderr
    no_index = tmp_path / "no-index"
    shutil.copytree(out, no_index, ignore=shutil.ignore_patterns("index"))
    unindexed = search_job(f"index={no_index}", "София")
    assert unindexed.returncode == 1 and "holds embeddings but no complete index" in unindexed.stderr
    typo = search_job(f"index={out}", "topk=3", "София")
    assert typo.returncode == 2 and "unknown key 'topk' (did you mean 'top_k'?)" in typo.stderr
    empty = search_job(f"index={out}", "   ")
    assert empty.returncode == 2 and "the query is empty" in empty.stderr
    assert not (tmp_path / "nowhere").exists()


def test_the_query_gets_the_encoder_s_instruction_unless_the_config_names_one(tmp_path, capsys):
    """An encoder of the contrastive stage has prompts["query"]: search() puts it before the query by
    default; instruction=... replaces it, instruction="" leaves the query bare."""
    texts = ["Столицата на България е София.", "Пловдив е вторият по големина град.", "Рила е планина.",
             "Дунав е река."]
    tokenizer = train_bpe_tokenizer(iter(texts * 20), vocab_size=300)
    model = write_trained_encoder(tmp_path / "model", tokenizer, stages=("mntp", "contrastive"),
                                  prompts={"query": "Намери пасаж: "})
    encoder = Bg2Vec.from_pretrained(model)
    vectors = encoder.encode(texts)
    indexed(tmp_path / "out", vectors, precisions=("float32",), model=str(model))
    query = "Кой град е столицата на България?"

    def scores(*overrides: str) -> list[float]:
        printed = search(load_config(SearchConfig, None, [f"index={tmp_path / 'out'}", f"query={query}", "top_k=4",
                                                          *overrides]))
        return [float(line.split()[1]) for line in printed.splitlines()[1::2]]

    def expected(instruction: str | None) -> list[float]:
        return sorted((vectors @ encoder.encode([query], instruction=instruction)[0]).tolist(), reverse=True)

    assert not np.allclose(expected("Намери пасаж: "), expected(None), atol=1e-3)  # the checks below can fail
    assert scores() == pytest.approx(expected("Намери пасаж: "), abs=1e-4)
    assert "the query gets the instruction 'Намери пасаж: '" in capsys.readouterr().out
    assert scores('instruction=""') == pytest.approx(expected(None), abs=1e-4)
    assert "instruction" not in capsys.readouterr().out
    assert scores("instruction=Търси: ") == pytest.approx(expected("Търси: "), abs=1e-4)
