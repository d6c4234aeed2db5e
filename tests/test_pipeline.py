"""The prepare stage end to end on a local Ray: outputs, counts, variants, bad input."""

from __future__ import annotations

import bz2
import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from bg2vec.config import load_config, to_dict
from bg2vec.data.config import PrepareConfig
from bg2vec.data.dumps.multistream import split_pages, write_multistream
from bg2vec.data.pipeline import load_manifest, prepare
from bg2vec.data.splits import split_of
from bg2vec.errors import Bg2VecError, DumpError
from conftest import REPO, SAMPLE_DUMP

pytestmark = pytest.mark.slow

# ns-0 pages of the sample that are neither redirects nor disambiguation pages
SAMPLE_ARTICLES = 34
FIRST_SENTENCES = {
    "София": "София е столицата и най-големият град на България.",
    "Пловдив": "Пловдив е вторият по големина град в България и административен център на едноименната област.",
    "Кирилица": "Кирилицата е азбука, създадена в края на IX или началото на X век в Първото българско царство.",
    "Рила": "Рила е най-високата планина в България и на целия Балкански полуостров.",
}


def run(output: Path, *overrides: str, config: str | None = "configs/tiny/prepare.yaml") -> dict:
    cfg = load_config(PrepareConfig, str(REPO / config) if config else None, [f"output={output}", *overrides])
    return prepare(cfg)


def pages_table(output) -> list[dict]:
    rows = pq.read_table(Path(output) / "pages").to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def blocks(output, split) -> np.ndarray:
    table = pq.read_table(Path(output) / "blocks" / split)
    return np.array(table["input_ids"].to_pylist(), dtype=np.int64)


@pytest.fixture(scope="module")
def tiny(ray_local, tmp_path_factory):
    output = tmp_path_factory.mktemp("tiny") / "data"
    return output, run(output)


def test_tiny_preset_counts_every_page(tiny):
    _, manifest = tiny
    counts = manifest["counts"]
    assert counts["pages_read"] == 47 and counts["pages_kept"] == SAMPLE_ARTICLES
    assert counts["pages_skipped"] == {"disambiguation": 3, "namespace": 5, "redirect": 5}
    assert sum(counts["pages_kept_by_split"].values()) == SAMPLE_ARTICLES
    assert manifest["source"]["sha1"] == hashlib.sha1(SAMPLE_DUMP.read_bytes()).hexdigest()
    assert manifest["source"]["siteinfo"]["lang"] == "bg"
    assert manifest["seq_len"] == 128 and manifest["salvage"] is None
    assert manifest["config"]["cleaning"]["min_text_chars"] == 100


def test_tiny_preset_pages(tiny):
    output, manifest = tiny
    schema = pq.read_schema(next((output / "pages").glob("*.parquet")))
    assert [(f.name, str(f.type)) for f in schema][:4] == [
        ("id", "int64"), ("title", "string"), ("text", "string"), ("split", "string")]
    rows = pages_table(output)
    assert len(rows) == SAMPLE_ARTICLES
    by_title = {r["title"]: r for r in rows}
    for title, sentence in FIRST_SENTENCES.items():
        assert by_title[title]["text"].startswith(sentence)
    assert by_title["София"]["categories"] == ["София", "Столици в Европа", "Градове в област София (столица)"]
    assert all(r["split"] == split_of(r["id"], 0.1) for r in rows)
    assert not {"Марица", "Балкан", "Кирилска азбука", "Беседа:София"} & set(by_title)
    assert sorted(p.name for p in (output / "pages").iterdir()) == manifest["files"]["pages"]


def documents(output) -> dict[str, list[list[int]]]:
    """Each split's pages tokenised by hand with the saved tokenizer: BOS, title, text, EOS."""
    tok = AutoTokenizer.from_pretrained(output / "tokenizer")
    docs = {"train": [], "validation": []}
    for r in pages_table(output):
        ids = tok(f"{r['title']}\n\n{r['text']}", add_special_tokens=False)["input_ids"]
        docs[r["split"]].append([tok.bos_token_id, *ids, tok.eos_token_id])
    return docs


def test_tiny_preset_blocks_hold_every_token_of_every_page(tiny):
    output, manifest = tiny
    tok = AutoTokenizer.from_pretrained(output / "tokenizer")
    assert len(tok) == 4000
    for split, split_docs in documents(output).items():
        packed = blocks(output, split)
        assert packed.shape[1] == 128 and packed.shape[0] == manifest["counts"]["blocks"][split]
        all_tokens = [t for d in split_docs for t in d]
        dropped = manifest["counts"]["dropped_tokens"][split]
        assert manifest["counts"]["tokens"][split] == len(all_tokens) == packed.size + dropped
        assert dropped < 128  # one shard: only its last partial block is dropped
        # the blocks are the documents' tokens, none invented or lost but the dropped tail
        missing = Counter(all_tokens) - Counter(packed.reshape(-1).tolist())
        assert sum(missing.values()) == dropped
        assert packed[0, 0] == tok.bos_token_id
    schema = pq.read_schema(next((output / "blocks" / "train").glob("*.parquet")))
    assert str(schema.field("input_ids").type) == "list<element: int32>"


def test_manifest_is_last_and_nothing_temporary_is_left(tiny):
    output, manifest = tiny
    assert load_manifest(str(output)) == manifest
    assert not [p for p in output.rglob("*") if ".tmp-" in p.name]
    assert manifest["tokenizer"] == {"name_or_path": "tokenizer", "trained": True, "vocab_size": 4000}


def test_rerun_needs_overwrite(ray_local, tmp_path, mistral_tokenizer_dir):
    output = tmp_path / "data"
    tok = f"tokenizer.name_or_path={mistral_tokenizer_dir}"
    first = run(output, tok)
    with pytest.raises(Bg2VecError, match="already holds a complete prepared dataset"):
        run(output, tok)
    second = run(output, tok, "overwrite=true")
    assert second["counts"] == first["counts"]
    assert sorted(p.name for p in (output / "pages").iterdir()) == second["files"]["pages"]  # old files gone


def test_multistream_dump_read_in_parallel_gives_the_same_pages(ray_local, tmp_path, tiny, sample_xml):
    header, page_xml, footer = split_pages(sample_xml)
    dump = tmp_path / "bgwiki-20261101-pages-articles-multistream.xml.bz2"
    write_multistream(header, page_xml, footer, dump,
                      tmp_path / "bgwiki-20261101-pages-articles-multistream-index.txt.bz2", pages_per_stream=4)
    output = tmp_path / "data"
    manifest = run(output, f"dump={dump}", "range_mb=0.001")  # index found next to the dump
    assert manifest["source"]["multistream_index"].endswith("-multistream-index.txt.bz2")
    assert manifest["source"]["read_ranges"] == 12
    assert pages_table(output) == pages_table(tiny[0])
    # 12 ranges on 2 CPUs: both passes fused, a pages file per range that kept a page (unfused: one
    # file, < 1,000 pages) and a shard per pages file (each dropping its own tail), yet the same
    # documents and tokens as the single-range run
    files = manifest["files"]
    assert 4 <= len(files["pages"]) <= 12 and set(files["blocks/train"]) <= set(files["pages"])
    counts, single = manifest["counts"], tiny[1]["counts"]
    assert counts["documents_tokenized"] == single["documents_tokenized"]
    assert counts["tokens"] == single["tokens"]
    for split, split_docs in documents(output).items():
        packed, dropped = blocks(output, split), counts["dropped_tokens"][split]
        assert packed.size + dropped == counts["tokens"][split]
        assert dropped < 128 * len(files["pages"])
        missing = Counter(t for d in split_docs for t in d) - Counter(packed.reshape(-1).tolist())
        assert sum(missing.values()) == dropped  # none invented or lost but the shards' tails


def test_real_english_excerpt(ray_local, tmp_path, shared_dir, mistral_tokenizer_dir):
    output = tmp_path / "en"
    manifest = run(output, f"dump={shared_dir / 'data/wiki/enwiki-sample-206pages.xml.bz2'}",
                   f"tokenizer.name_or_path={mistral_tokenizer_dir}", "seq_len=512", config=None)
    counts = manifest["counts"]
    assert (counts["pages_read"], counts["pages_kept"]) == (206, 98)
    assert counts["pages_skipped"] == {"disambiguation": 8, "namespace": 1, "redirect": 99}
    assert manifest["special_tokens"] == {"bos": 1, "eos": 2}
    anarchism = next(r for r in pages_table(output) if r["title"] == "Anarchism")
    assert anarchism["text"].startswith("Anarchism is a political philosophy")
    assert counts["blocks"]["train"] * 512 + counts["dropped_tokens"]["train"] == counts["tokens"]["train"]


def test_real_bulgarian_excerpt(ray_local, tmp_path, shared_dir, mistral_tokenizer_dir):
    output = tmp_path / "bg"
    manifest = run(output, f"dump={shared_dir / 'data/wiki/bgwiki-sample-3pages.xml.bz2'}",
                   f"tokenizer.name_or_path={mistral_tokenizer_dir}", config=None)
    assert manifest["counts"]["pages_skipped"] == {"namespace": 2}
    (page,) = pages_table(output)
    assert (page["id"], page["title"], page["revision_id"]) == (558, "Григориански календар", 7862180)
    assert page["text"].startswith("Григорианският календар (понякога наричан и Грегориански календар")


def test_truncated_dump_fails_cleanly_or_is_salvaged(ray_local, tmp_path, sample_xml, mistral_tokenizer_dir):
    data = bz2.compress(sample_xml, 1)
    dump = tmp_path / "cut.xml.bz2"
    dump.write_bytes(data[: len(data) * 2 // 3])
    tok = f"tokenizer.name_or_path={mistral_tokenizer_dir}"
    output = tmp_path / "strict"
    with pytest.raises(DumpError, match="the bz2 data ends early.*salvage=true"):
        run(output, f"dump={dump}", tok)
    assert not (output / "manifest.json").exists() and not (output / "pages").exists()
    manifest = run(tmp_path / "salvaged", f"dump={dump}", tok, "salvage=true")
    salvage = manifest["salvage"]
    assert salvage["ranges_cut_short"] == 1 and salvage["bytes_lost"] > 0
    assert "the bz2 data ends early" in salvage["problems"][0]
    assert 10 < manifest["counts"]["pages_kept"] < SAMPLE_ARTICLES


def test_a_wrong_tokenizer_fails_before_any_work(ray_local, tmp_path):
    output = tmp_path / "data"
    with pytest.raises(Bg2VecError, match="cannot load tokenizer"):
        run(output, f"tokenizer.name_or_path={tmp_path / 'no-such-tokenizer'}")
    assert not output.exists()


def test_failure_after_pages_removes_the_partial_output(ray_local, tmp_path, monkeypatch, mistral_tokenizer_dir):
    import bg2vec.data.pipeline as pipeline

    def fail(*args, **kwargs):
        assert any((tmp_path / "data" / "pages").iterdir())  # the pages were written
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "_write_blocks", fail)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path / "data", f"tokenizer.name_or_path={mistral_tokenizer_dir}")
    assert not any((tmp_path / "data").iterdir())


def test_url_dump_is_downloaded_verified_and_prepared(ray_local, tmp_path, sample_xml, mistral_tokenizer_dir):
    served = tmp_path / "served"
    served.mkdir()
    data = bz2.compress(sample_xml)
    (served / "bgwiki-20261101-pages-articles.xml.bz2").write_bytes(data)
    sha1 = hashlib.sha1(data).hexdigest()
    (served / "bgwiki-20261101-sha1sums.txt").write_text(f"{sha1}  bgwiki-20261101-pages-articles.xml.bz2\n")
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/bgwiki-20261101-pages-articles.xml.bz2"
        manifest = run(tmp_path / "data", f"dump={url}", f"download_dir={tmp_path / 'dl'}",
                       f"tokenizer.name_or_path={mistral_tokenizer_dir}")
    finally:
        server.shutdown()
    assert manifest["source"]["sha1"] == sha1
    assert (tmp_path / "dl" / "bgwiki-20261101-pages-articles.xml.bz2").read_bytes() == data
    assert manifest["counts"]["pages_kept"] == SAMPLE_ARTICLES


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_output_as_uri(ray_local, tmp_path, mistral_tokenizer_dir):
    output = f"file://{tmp_path}/uri-out"
    manifest = run(output, f"tokenizer.name_or_path={mistral_tokenizer_dir}")
    assert json.loads((tmp_path / "uri-out" / "manifest.json").read_text())["counts"] == manifest["counts"]
    expected = load_config(PrepareConfig, str(REPO / "configs/tiny/prepare.yaml"),
                           [f"output={output}", f"tokenizer.name_or_path={mistral_tokenizer_dir}"])
    assert manifest["config"] == to_dict(expected)


def test_dump_and_output_on_s3(ray_local, tmp_path, sample_xml, s3):
    """A real S3 API: read the dump with ranged GETs, write every output there."""
    fs, base = s3
    with fs.open_output_stream("bucket/dumps/bgwiki-sample.xml") as f:
        f.write(sample_xml)
    manifest = run(base.format("prepared"), f"dump={base.format('dumps/bgwiki-sample.xml')}", "range_mb=0.05")
    assert manifest["counts"]["pages_kept"] == SAMPLE_ARTICLES and manifest["source"]["read_ranges"] == 5
    saved = fs.open_input_stream("bucket/prepared/manifest.json").read().decode()
    assert json.loads(saved)["counts"] == manifest["counts"]
    assert "k:s@" not in saved and "s3://***@bucket/prepared" in saved  # credentials never saved
    assert pq.read_table("bucket/prepared/pages", filesystem=fs).num_rows == SAMPLE_ARTICLES
    train = pq.read_table("bucket/prepared/blocks/train", filesystem=fs)
    assert train.num_rows == manifest["counts"]["blocks"]["train"]
    assert fs.get_file_info("bucket/prepared/tokenizer/tokenizer.json").type == pafs.FileType.File


def _job(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "prepare_data.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"),
    (b"<html><body>Service Unavailable</body></html>", "is an HTML page"),
])
def test_job_rejects_bad_dumps_before_starting_work(tmp_path, content, message):
    dump = tmp_path / "dump.xml"
    dump.write_bytes(content)
    result = _job("--config", "configs/tiny/prepare.yaml", f"dump={dump}", f"output={tmp_path / 'out'}")
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_job_reports_a_truncated_dump_found_by_a_worker(tmp_path, sample_xml):
    dump = tmp_path / "cut.xml"
    dump.write_bytes(sample_xml[: len(sample_xml) // 2])
    result = _job("--config", str(REPO / "configs/tiny/prepare.yaml"), f"dump={dump}",
                  f"output={tmp_path / 'out'}", "max_workers=1", cwd=tmp_path)
    assert result.returncode == 1
    error = result.stderr[result.stderr.index("error: "):]
    assert "the XML is truncated" in error and "salvage=true" in error and "Traceback" not in error
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_job_runs_the_tiny_preset_from_any_directory(tmp_path):
    result = _job("--config", str(REPO / "configs/tiny/prepare.yaml"), f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "34 kept" in result.stdout and (tmp_path / "out" / "manifest.json").exists()
