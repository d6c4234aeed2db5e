"""jobs/pairs.py end to end on the prepared sample: layout, manifest, splits, duplicates, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bg2vec.config import load_config
from bg2vec.data.splits import split_of
from bg2vec.pairs import pipeline
from bg2vec.pairs.config import PairsConfig
from bg2vec.pairs.stages import PAIRS_SCHEMA
from conftest import REPO

pytestmark = pytest.mark.slow

USER = [{"query": "Коя е най-високата планина на Балканите?", "positive": "Рила е най-високата планина."},
        {"query": "Кой основава България?", "positive": "Аспарух.", "negatives": ["Крум."], "instruction": ""}]


def run(output: Path, *overrides: str) -> dict:
    return pipeline.mine_pairs(load_config(PairsConfig, str(REPO / "configs/tiny/pairs.yaml"),
                                           [f"output={output}", *overrides]))


def pairs_of(output: Path, split: str) -> list[dict]:
    tables = [pq.read_table(f) for f in sorted((output / "pairs" / split).glob("*.parquet"))]
    for table in tables:
        assert table.schema == PAIRS_SCHEMA
    return pa.concat_tables(tables).to_pylist() if tables else []


@pytest.fixture(scope="module")
def mined(ray_local, prepared_sample, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("pairs")
    user = root / "user.jsonl"
    user.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in USER + USER[:1]), encoding="utf-8")
    calls = []

    def fake_negatives(output, model, settings):  # helper: the real one needs an encoder; here, when it runs
        calls.append((output, model, (Path(output) / "manifest.json").exists(),
                      sorted(p.name for p in (Path(output) / "pairs" / "train").iterdir())))
        return {"model": model, "per_pair": 0}

    monkeypatch_module.setattr(pipeline, "mine_negatives", fake_negatives)
    output = root / "out"
    manifest = run(output, f"data={prepared_sample}", f"files=[{user}]", f"model={root / 'encoder'}")
    return output, manifest, calls, prepared_sample


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_layout_and_manifest(mined):
    output, manifest, calls, data = mined
    assert json.loads((output / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "bg2vec-pairs-v1"
    assert manifest["sources"] == {"data": str(data), "files": [str(output.parent / "user.jsonl")],
                                   "model": str(output.parent / "encoder")}
    assert sorted(p.name for p in output.iterdir()) == ["manifest.json", "pairs"]
    for split in ("train", "validation"):
        assert sorted(p.name for p in (output / "pairs" / split).iterdir()) == manifest["files"][f"pairs/{split}"]
        rows = pairs_of(output, split)
        assert Counter(r["kind"] for r in rows) == {k: n for k, n in manifest["counts"][split].items() if n}
    # hard negatives are mined into the written files before the manifest exists
    assert calls == [(str(output), str(output.parent / "encoder"), False, manifest["files"]["pairs/train"])]
    assert manifest["negatives"] == {"model": str(output.parent / "encoder"), "per_pair": 0}
    assert manifest["config"]["kinds"] == ["title_lead", "section", "lead_body", "crops", "inverse_cloze"]
    assert manifest["pages"] == {"read": 34, "with_sections": True}
    train = manifest["counts"]["train"]
    assert train["title_lead"] + manifest["counts"]["validation"]["title_lead"] == 34  # every page has a lead
    assert min(train.values()) >= 1 and sum(train.values()) > 250


def test_pairs_stay_in_their_pages_split(mined):
    output, _, _, data = mined
    pages = pq.read_table(data / "pages", columns=["id", "text", "split"]).to_pylist()
    split_of_page = {p["id"]: p["split"] for p in pages}
    text_of_page = {p["id"]: p["text"] for p in pages}
    for split in ("train", "validation"):
        for pair in pairs_of(output, split):
            if pair["kind"] == "user":
                assert pair["page_id"] is None and split == split_of(pair["query"], 0.1)
                continue
            assert split_of_page[pair["page_id"]] == split
            assert pair["instruction"] == ("" if pair["kind"] == "crops" else None) and pair["negatives"] == []
            if pair["kind"] in ("crops", "inverse_cloze"):
                assert pair["query"] != pair["positive"] and pair["query"] not in pair["positive"]
                assert pair["query"] in text_of_page[pair["page_id"]]


def test_duplicates_dropped_and_counted(mined):
    output, manifest, _, _ = mined
    rows = pairs_of(output, "train") + pairs_of(output, "validation")
    assert len({(r["query"], r["positive"]) for r in rows}) == len(rows)
    user = [r for r in rows if r["kind"] == "user"]
    assert sorted((r["query"], r["negatives"], r["instruction"]) for r in user) == sorted(
        (u["query"], u.get("negatives", []), u.get("instruction")) for u in USER)
    assert manifest["dropped"]["duplicate"] == 1  # the repeated user pair
    assert set(manifest["dropped"]) <= {"duplicate", "positive_too_short", "query_in_positive", "query_too_short"}


def test_old_prepared_directory_without_sections(ray_local, prepared_sample, tmp_path):
    data = tmp_path / "old"
    (data / "pages").mkdir(parents=True)
    pages = pq.read_table(prepared_sample / "pages").drop_columns(["sections"])
    pq.write_table(pages, data / "pages" / "part-0.parquet")
    (data / "manifest.json").write_text(json.dumps({"files": {"pages": ["part-0.parquet"]}}))
    manifest = run(tmp_path / "out", f"data={data}")
    assert manifest["pages"] == {"read": 34, "with_sections": False}
    counts = Counter()
    for split in ("train", "validation"):
        counts.update({k: n for k, n in manifest["counts"][split].items() if n})
    assert set(counts) == {"crops", "inverse_cloze"} and counts["inverse_cloze"] > 50


def test_job_refuses_a_complete_output_and_bad_files(mined, tmp_path):
    output, manifest, _, data = mined
    before = (output / "manifest.json").read_text()

    def job(*args):
        return subprocess.run([sys.executable, "jobs/pairs.py", "--config", "configs/tiny/pairs.yaml", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    result = job(f"data={data}", f"output={output}")
    assert result.returncode == 1
    assert "already holds a complete pairs dataset (manifest.json); pass overwrite=true" in result.stderr
    assert (output / "manifest.json").read_text() == before
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": ""}\n')
    result = job(f"files=[{bad}]", f"output={tmp_path / 'out'}", "data=null")
    assert result.returncode == 1 and f"pairs file {bad}, line 1: field 'positive' is an empty string" in result.stderr
    assert not (tmp_path / "out").exists()
    assert job("output=x", "data=null").returncode == 2  # neither data nor files
