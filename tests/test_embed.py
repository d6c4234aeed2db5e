"""Batch embedding (jobs/embed.py): Ray Data passages and an actor pool give exactly Bg2Vec.encode's vectors,
one Parquet file per input shard, resumable, with clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.config import load_config
from bg2vec.embedding.config import EmbedConfig
from bg2vec.embedding.passages import passage_windows
from bg2vec.embedding.pipeline import embed
from bg2vec.errors import Bg2VecError, ConfigError
from conftest import REPO

pytestmark = pytest.mark.slow


def test_passage_windows_by_hand():
    assert passage_windows(0, 8, 2) == []
    assert passage_windows(5, 8, 2) == [(0, 5)]
    assert passage_windows(8, 8, 2) == [(0, 8)]
    assert passage_windows(9, 8, 2) == [(0, 8), (6, 9)]
    assert passage_windows(20, 8, 2) == [(0, 8), (6, 14), (12, 20)]  # the last window ends at the last token
    assert passage_windows(21, 8, 0) == [(0, 8), (8, 16), (16, 21)]


@pytest.fixture(scope="module")
def pages(ray_local, prepared_sample, tmp_path_factory):
    """The sample dump's clean pages in three Parquet shards, plus a fourth whose pages have no text."""
    table = pq.read_table(prepared_sample / "pages").sort_by("id")
    shards = tmp_path_factory.mktemp("embed") / "shards"
    shards.mkdir()
    for i, part in enumerate(np.array_split(np.arange(table.num_rows), 3)):
        pq.write_table(table.take(part), shards / f"pages-{i}.parquet")
    blank = table.slice(0, 2).set_column(table.schema.get_field_index("text"), "text", pa.array(["", "   "]))
    pq.write_table(blank, shards / "pages-3-blank.parquet")
    return prepared_sample, shards, table


def config(model, input_path, output, *overrides) -> EmbedConfig:
    return load_config(EmbedConfig, str(REPO / "configs/tiny/embed.yaml"), [
        f"model={model}", f"input={input_path}", f"output={output}", "passage_tokens=40", "overlap_tokens=8",
        "batch_size=8", "progress=false", *overrides])


@pytest.fixture(scope="module")
def embedded(pages, sample_encoder, tmp_path_factory):
    _, shards, _ = pages
    out = tmp_path_factory.mktemp("vectors") / "out"
    manifest = embed(config(sample_encoder, shards, out))
    return out, manifest


def test_vectors_equal_bg2vec_encode_on_the_same_passages(embedded, pages, sample_encoder):
    out, manifest = embedded
    _, _, table = pages
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    files = sorted((out / "vectors").glob("*.parquet"))
    assert [f.name for f in files] == ["pages-0.parquet", "pages-1.parquet", "pages-2.parquet",
                                       "pages-3-blank.parquet"]
    vectors = pq.read_table(out / "vectors")  # the shards read back as one table: one schema
    assert vectors.column_names == ["id", "passage_index", "title", "passage", "char_start", "char_end", "vector"]
    titles = dict(zip(table.column("id").to_pylist(), table.column("title").to_pylist()))
    assert vectors.column("title").to_pylist() == [titles[i] for i in vectors.column("id").to_pylist()]
    assert pq.read_metadata(files[-1]).num_rows == 0  # pages without text: an empty shard, still written
    assert vectors.num_rows == manifest["passages"] == sum(s["passages"] for s in manifest["shards"]) > len(texts)

    encoder = Bg2Vec.from_pretrained(sample_encoder)
    expected = encoder.encode(vectors.column("passage").to_pylist(), batch_size=5)
    got = np.stack(vectors.column("vector").to_numpy(zero_copy_only=False))
    assert got.shape == (vectors.num_rows, 32) and manifest["dimension"] == 32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_passages_cover_each_document_in_order_with_the_overlap(embedded, pages, sample_encoder):
    out, _ = embedded
    _, _, table = pages
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    tokenizer = AutoTokenizer.from_pretrained(sample_encoder)
    rows = pq.read_table(out / "vectors").to_pylist()
    by_doc: dict[int, list[dict]] = {}
    for row in rows:
        by_doc.setdefault(row["id"], []).append(row)
    assert set(by_doc) == {i for i, t in texts.items() if t.strip()}  # every page with text, only those
    for doc_id, passages in by_doc.items():
        text = texts[doc_id]
        assert [p["passage_index"] for p in passages] == list(range(len(passages)))
        for p in passages:
            assert p["passage"] == text[p["char_start"]:p["char_end"]]
        offsets = [(a, b) for a, b in tokenizer(text, add_special_tokens=False,
                                                return_offsets_mapping=True)["offset_mapping"] if b > a]
        starts = [next(i for i, (a, _) in enumerate(offsets) if a == p["char_start"]) for p in passages]
        assert starts == list(range(0, 32 * len(passages), 32))  # stride = 40 - 8 tokens
        assert passages[0]["char_start"] == offsets[0][0] and passages[-1]["char_end"] == offsets[-1][1]


def test_an_interrupted_run_resumes_and_skips_finished_shards(embedded, pages, sample_encoder, capsys):
    out, manifest = embedded
    _, shards, _ = pages
    before = {f.name: (f.stat().st_mtime_ns, pq.read_table(f)) for f in (out / "vectors").glob("*.parquet")}
    (out / "manifest.json").unlink()  # as if the run had stopped while the last shards were written
    (out / "vectors" / "pages-2.parquet").unlink()
    resumed = embed(config(sample_encoder, shards, out))
    assert resumed["skipped"] == 3 and resumed["this_run"]["shards"] == 1
    assert "4 shard(s), 3 finished earlier, 1 to do" in capsys.readouterr().out
    for f in (out / "vectors").glob("*.parquet"):
        if f.name != "pages-2.parquet":
            assert f.stat().st_mtime_ns == before[f.name][0]  # untouched
        assert pq.read_table(f).equals(before[f.name][1])  # the redone shard is the same
    assert resumed["passages"] == manifest["passages"]
    assert json.loads((out / "manifest.json").read_text())["passages"] == manifest["passages"]

    again = embed(config(sample_encoder, shards, out))  # complete: nothing is redone
    assert again["already_complete"]
    with pytest.raises(Bg2VecError, match="other settings \\(overlap_tokens\\)"):
        embed(config(sample_encoder, shards, out, "overlap_tokens=4"))


def test_jsonl_without_ids_through_the_job(pages, sample_encoder, tmp_path):
    _, _, table = pages
    docs = table.column("text").to_pylist()[:5]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the job starts a Ray of its own
    done = subprocess.run([sys.executable, "jobs/embed.py", "--config", "configs/tiny/embed.yaml",
                           f"model={sample_encoder}", f"input={corpus}", f"output={out}", "text_column=body",
                           "passage_tokens=40", "overlap_tokens=8", "progress=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "passages/s" in done.stdout and "shard 1/1 corpus.parquet" in done.stdout
    vectors = pq.read_table(out / "vectors" / "corpus.parquet")
    assert set(vectors.column("id").to_pylist()) == {hashlib.sha1(t.encode()).hexdigest() for t in docs}
    expected = Bg2Vec.from_pretrained(sample_encoder).encode(vectors.column("passage").to_pylist())
    np.testing.assert_allclose(np.stack(vectors.column("vector").to_numpy(zero_copy_only=False)), expected, atol=1e-5)


def test_model_input_and_output_on_s3(pages, sample_encoder, embedded, s3):
    """A real S3 API: the actors fetch the model, Ray Data reads the shards, the driver writes."""
    _, shards, _ = pages
    fs, uri = s3
    pafs.copy_files(str(sample_encoder), "bucket/encoder", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    pafs.copy_files(str(shards), "bucket/corpus", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    manifest = embed(config(uri.format("encoder"), uri.format("corpus"), uri.format("vectors")))
    local, _ = embedded
    assert manifest["passages"] == json.loads((local / "manifest.json").read_text())["passages"]
    for name in ("pages-0.parquet", "pages-3-blank.parquet"):
        assert pq.read_table(f"bucket/vectors/vectors/{name}", filesystem=fs).equals(
            pq.read_table(local / "vectors" / name))
    saved = fs.open_input_stream("bucket/vectors/manifest.json").read().decode()
    assert "k:s@" not in saved and "s3://***@bucket/encoder" in saved  # credentials never saved


def test_bad_inputs_are_named_and_write_nothing(pages, sample_encoder, tmp_path):
    _, shards, _ = pages
    with pytest.raises(Bg2VecError, match="does not exist"):
        embed(config(sample_encoder, tmp_path / "nothing", tmp_path / "o1"))
    with pytest.raises(Bg2VecError, match="has no column 'body'"):
        embed(config(sample_encoder, shards, tmp_path / "o2", "text_column=body"))
    with pytest.raises(Bg2VecError, match="passage_tokens=63 plus 2 special/instruction tokens exceeds the "
                                          "encoder's max_length=64"):
        embed(config(sample_encoder, shards, tmp_path / "o3", "passage_tokens=63"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text('{"text": "а"}\n')
    pq.write_table(pa.table({"text": ["б"]}), mixed / "b.parquet")
    with pytest.raises(Bg2VecError, match="mixes Parquet and JSON"):
        embed(config(sample_encoder, mixed, tmp_path / "o4"))
    not_ours = tmp_path / "not-ours"
    not_ours.mkdir()
    (not_ours / "keep.txt").write_text("user data")
    with pytest.raises(Bg2VecError, match="is not empty and is not an embedding output"):
        embed(config(sample_encoder, shards, not_ours))
    assert [p.name for p in not_ours.iterdir()] == ["keep.txt"]
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    with pytest.raises(ConfigError, match="overlap_tokens must be in"):
        config(sample_encoder, shards, tmp_path / "o5", "overlap_tokens=40")
