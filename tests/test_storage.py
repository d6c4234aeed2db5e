"""bg2vec.storage.localize against a real S3 API (moto's server): a cloud model is copied once into the model
cache, reused while the remote is unchanged, replaced when it changes, and never used half copied."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from bg2vec.storage import SOURCE_RECORD, WEIGHT_SUFFIXES, localize

MODEL = {"config.json": b'{"hidden_size": 8}', "adapter_model.safetensors": b"\0" * 64,
         "stages/mntp/adapter_config.json": b'{"r": 4}'}


def upload(fs, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with fs.open_output_stream(f"bucket/model/{name}") as out:
            out.write(data)


@pytest.fixture
def copies(monkeypatch, tmp_path) -> list[str]:
    """The remote files localize copies, in order (the model cache in tmp_path/cache)."""
    monkeypatch.setenv("BG2VEC_CACHE", str(tmp_path / "cache"))
    copied, copy_files = [], pafs.copy_files

    def counting(source, destination, **kwargs):
        copied.append(source)
        copy_files(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", counting)
    return copied


def contents(folder: str) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != SOURCE_RECORD}


def cache_entries(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock"))


def test_a_cloud_model_is_copied_once_and_replaced_when_it_changes(s3, copies, tmp_path):
    fs, uri = s3
    upload(fs, MODEL)
    first = localize(uri.format("model"))
    assert contents(first) == MODEL and len(copies) == 3
    assert first.startswith(str(tmp_path / "cache" / "models"))
    config = Path(first) / "config.json"
    inode = config.stat().st_ino
    assert localize(uri.format("model")) == first and len(copies) == 3  # nothing copied again
    assert config.stat().st_ino == inode
    record = (Path(first) / SOURCE_RECORD).read_text()
    assert "k:s@" not in record and "s3://***@bucket/model" in record  # credentials never written

    # just the tokenizer and configs: a copy of its own, without the weights
    light = localize(uri.format("model"), skip_suffixes=WEIGHT_SUFFIXES)
    assert light != first and set(contents(light)) == {"config.json", "stages/mntp/adapter_config.json"}
    assert len(copies) == 5

    upload(fs, {"config.json": b'{"hidden_size": 16}'})  # the remote changes (another size)
    again = localize(uri.format("model"))
    assert again == first and contents(again) == {**MODEL, "config.json": b'{"hidden_size": 16}'}
    assert len(copies) == 8  # a whole fresh copy
    assert localize(uri.format("model")) == first and len(copies) == 8
    assert cache_entries(tmp_path) == sorted([Path(first).name, Path(light).name])  # no leftovers

    fs.delete_file("bucket/model/stages/mntp/adapter_config.json")  # a file removed is a change too
    assert set(contents(localize(uri.format("model")))) == {"config.json", "adapter_model.safetensors"}


def test_an_interrupted_copy_is_never_used(s3, copies, tmp_path, monkeypatch):
    fs, uri = s3
    upload(fs, MODEL)
    copy_files = pafs.copy_files  # the fixture's, which counts into copies

    def interrupted(source, destination, **kwargs):
        if len(copies) == 1:  # Ctrl-C while copying the second file
            raise KeyboardInterrupt
        copy_files(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        localize(uri.format("model"))
    assert cache_entries(tmp_path) == []  # no copy, complete or half, and no staging folder
    monkeypatch.setattr(pafs, "copy_files", copy_files)
    folder = localize(uri.format("model"))
    assert contents(folder) == MODEL

    upload(fs, {"config.json": b'{"hidden_size": 16}'})
    copies.clear()
    monkeypatch.setattr(pafs, "copy_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        localize(uri.format("model"))
    # the complete old copy stays as it was (and records the old files: the next call replaces it)
    assert contents(folder) == MODEL and cache_entries(tmp_path) == [Path(folder).name]
    monkeypatch.setattr(pafs, "copy_files", copy_files)
    assert contents(localize(uri.format("model")))["config.json"] == b'{"hidden_size": 16}'


def test_local_paths_and_hub_ids_are_not_copied(copies, tmp_path):
    assert localize(str(tmp_path)) == str(tmp_path)
    assert localize("file:///data/model") == "file:///data/model"
    assert localize("org/model") == "org/model"
    assert copies == [] and not (tmp_path / "cache").exists()
