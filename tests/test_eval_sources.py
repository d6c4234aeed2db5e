"""The official evaluation sets are downloaded like MTEB's: pinned sources, checksums, a resumable
cache, a clear error offline. A local HTTP server plays the publishers, serving the real files from
../shared under their published paths."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.parse

import pytest

from bg2vec.errors import Bg2VecError
from bg2vec.evaluation.sources import OFFICIAL_FILES, RemoteFile, cached_file
from bg2vec.evaluation.tasks import TaskSources, TaskSpec, load_task
from bg2vec.ray_session import free_port


def published_path(path: str) -> str:
    return urllib.parse.urlsplit(OFFICIAL_FILES[path].url).path


def leftovers(folder):
    """Files other than download locks (the lock files of bg2vec.data.dumps.download stay, empty)."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


@pytest.fixture
def publisher(server, shared_dir, fast_retries):
    """The server holding SIB-200's TSVs as they are and EXAMS's paragraphs file in a .tar.gz."""
    eval_dir = shared_dir / "data" / "eval"
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        server.files[published_path(f"sib200_bul/{name}")] = (eval_dir / "sib200_bul" / name).read_bytes()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(eval_dir / "exams_bg" / "dev_bg_with_para.jsonl", arcname="dev_bg_with_para.jsonl")
    server.files[published_path("exams_bg/dev_bg_with_para.jsonl")] = archive.getvalue()
    return server


def test_the_pinned_checksums_are_those_of_the_real_files(shared_dir):
    for path in ("sib200_bul/train.tsv", "sib200_bul/dev.tsv", "sib200_bul/test.tsv", "sib200_bul/labels.txt",
                 "exams_bg/train_bg.jsonl", "exams_bg/dev_bg.jsonl", "exams_bg/dev_bg_with_para.jsonl"):
        data = (shared_dir / "data" / "eval" / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == OFFICIAL_FILES[path].sha256, path
    assert all("raw.githubusercontent.com" in f.url and len(f.url.split("/")[5]) == 40  # a full commit hash
               for f in OFFICIAL_FILES.values())


def test_a_file_is_downloaded_once_verified_and_then_read_from_the_cache(publisher, shared_dir, tmp_path):
    path = cached_file("sib200_bul/train.tsv", tmp_path, mirror=publisher.base)
    assert path == tmp_path / "sib200_bul" / "train.tsv"
    assert path.read_bytes() == (shared_dir / "data" / "eval" / "sib200_bul" / "train.tsv").read_bytes()
    assert cached_file("sib200_bul/train.tsv", tmp_path, mirror=publisher.base) == path
    assert len(publisher.seen(published_path("sib200_bul/train.tsv"))) == 1
    assert sorted(p.name for p in (tmp_path / "sib200_bul").iterdir()) == [".downloads", "train.tsv"]
    assert leftovers(tmp_path / "sib200_bul" / ".downloads") == []


def test_an_archive_member_is_extracted_and_the_archive_dropped(publisher, shared_dir, tmp_path):
    path = cached_file("exams_bg/dev_bg_with_para.jsonl", tmp_path, mirror=publisher.base)
    assert path.read_bytes() == (shared_dir / "data" / "eval" / "exams_bg" / "dev_bg_with_para.jsonl").read_bytes()
    assert [p.name for p in (tmp_path / "exams_bg").iterdir() if not p.name.startswith(".")] == [path.name]
    assert leftovers(tmp_path / "exams_bg" / ".downloads") == []


def test_an_interrupted_download_resumes_where_it_stopped(publisher, tmp_path):
    served = published_path("sib200_bul/test.tsv")
    publisher.drop_after(served, 10_000, times=1)
    path = cached_file("sib200_bul/test.tsv", tmp_path, mirror=publisher.base)
    requests = publisher.seen(served)
    assert [r.range for r in requests] == [None, "bytes=10000-"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == OFFICIAL_FILES["sib200_bul/test.tsv"].sha256


def test_a_corrupt_download_is_refused_and_leaves_nothing_in_the_cache(publisher, tmp_path):
    served = published_path("sib200_bul/dev.tsv")
    good = publisher.files[served]
    publisher.files[served] = good.replace("а".encode(), "о".encode(), 1)
    with pytest.raises(Bg2VecError, match=r"sib200_bul/dev.tsv downloaded from .* has SHA-256 [0-9a-f]{64}, not "
                                          r"the published file's 0b027aad.*Run again"):
        cached_file("sib200_bul/dev.tsv", tmp_path, mirror=publisher.base)
    assert not (tmp_path / "sib200_bul" / "dev.tsv").exists()
    assert leftovers(tmp_path / "sib200_bul") == []
    publisher.files[served] = good  # the next run downloads it afresh
    assert cached_file("sib200_bul/dev.tsv", tmp_path, mirror=publisher.base).read_bytes() == good


def test_a_broken_archive_is_named(server, fast_retries, tmp_path):
    files = {"x/a.jsonl": RemoteFile("x/a.jsonl", f"{server.base}/a.tar.gz", "0" * 64, member="a.jsonl")}
    server.files["/a.tar.gz"] = b"not a tar file"
    with pytest.raises(Bg2VecError, match=r"a.tar.gz is not a .tar.gz holding a.jsonl"):
        cached_file("x/a.jsonl", tmp_path, files=files)
    assert not (tmp_path / "x" / "a.jsonl").exists()


def test_offline_the_error_says_to_set_data_dir(fast_retries, tmp_path):
    mirror = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(Bg2VecError, match=r"cannot download the evaluation file sib200_bul/train.tsv: .*Offline\? "
                                          r"Set data_dir= to a folder holding a downloaded copy"):
        cached_file("sib200_bul/train.tsv", tmp_path, mirror=mirror)
    with pytest.raises(Bg2VecError, match=r"mine.tsv is not in .* not an official evaluation file"):
        cached_file("sets/mine.tsv", tmp_path)


def test_a_task_reads_its_files_from_the_cache_or_from_data_dir(publisher, shared_dir, tmp_path):
    spec = TaskSpec(name="SIB200Classification", type="classification", label_column="category",
                    files={"train": ["sib200_bul/train.tsv"], "test": ["sib200_bul/test.tsv"]})
    downloaded = load_task(spec, TaskSources(cache_dir=tmp_path, mirror=publisher.base))
    local = load_task(spec, TaskSources(data_dir=shared_dir / "data" / "eval"))
    assert downloaded.texts == local.texts and len(local.texts) == 701 + 204
    assert (tmp_path / "sib200_bul" / "test.tsv").is_file()
    with pytest.raises(Bg2VecError, match=r"task SIB200Classification: file .*/nowhere/sib200_bul/train.tsv does "
                                          r"not exist .*set data_dir="):
        load_task(spec, TaskSources(data_dir=tmp_path / "nowhere"))
