"""Shared fixtures: the real third-party data in ../shared, a local Ray, dump variants."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
from pathlib import Path

import pytest

pytest_plugins = ["dump_server"]  # the local HTTP dump server of the download tests

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DUMP = REPO / "bg2vec" / "resources" / "bgwiki-sample-pages-articles.xml"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (or $BG2VEC_SHARED): must exist in CI, may be absent on a developer's laptop."""
    path = Path(os.environ.get("BG2VEC_SHARED", REPO.parent / "shared"))
    if not (path / "data").is_dir():
        message = f"the shared test data is missing at {path} (set BG2VEC_SHARED)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "tokenizers" / "mistral-7b-instruct-v0.3"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, like the CI machine)."""
    import ray
    from ray.data import DataContext

    # address="local": a new Ray of our own, even when `ray start` left a cluster address behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_xml() -> bytes:
    return SAMPLE_DUMP.read_bytes()


def compress(data: bytes, codec: str) -> bytes:
    return {"bz2": bz2.compress, "xz": lzma.compress, "gzip": gzip.compress, "plain": bytes}[codec](data)
