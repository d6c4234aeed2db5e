"""Shared fixtures: the real third-party data in ../shared, a local Ray, dump variants."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
from pathlib import Path

import pytest

from bg2vec.ray_session import free_port

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


@contextlib.contextmanager
def local_ray():
    """A local Ray of our own (2 CPUs, like the CI machine), or the one this process already runs."""
    import ray
    from ray.data import DataContext

    from bg2vec.ray_session import start_local_ray

    if ray.is_initialized():
        yield ray
        return
    start_local_ray(num_cpus=2)
    DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _no_ray_across_modules():
    """Whatever Ray a module's code started (a job's init_ray in-process) ends with the module."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """A fresh local Ray for each module that asks: no module's actors, jobs or Ray Data state reach the next
    (late in one session-long Ray, in-process actor pools and Serve deployments once never came up)."""
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory) -> Path:
    """The sample dump prepared with configs/tiny/prepare.yaml (pages/, a trained tokenizer/), once per session;
    read it, never change it."""
    from bg2vec.config import load_config
    from bg2vec.data.config import PrepareConfig
    from bg2vec.data.pipeline import prepare

    data = tmp_path_factory.mktemp("sample") / "data"
    with local_ray():
        prepare(load_config(PrepareConfig, str(REPO / "configs/tiny/prepare.yaml"), [f"output={data}"]))
    return data


@pytest.fixture(scope="session")
def sample_encoder(prepared_sample, tmp_path_factory) -> Path:
    """A tiny trained encoder (write_trained_encoder, max_length 64) on the prepared sample's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared_sample / "tokenizer")
    return write_trained_encoder(tmp_path_factory.mktemp("encoder"), tokenizer, max_length=64)


@pytest.fixture(scope="session")
def sample_xml() -> bytes:
    return SAMPLE_DUMP.read_bytes()


def compress(data: bytes, codec: str) -> bytes:
    return {"bz2": bz2.compress, "xz": lzma.compress, "gzip": gzip.compress, "plain": bytes}[codec](data)


@pytest.fixture
def s3():
    """A real S3 API (moto's server) on a free port: (a pyarrow filesystem holding an empty "bucket",
    the URI template "s3://k:s@bucket/{}?endpoint_override=...", credentials in it as users write them)."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        fs = pafs.S3FileSystem(access_key="k", secret_key="s", endpoint_override=f"127.0.0.1:{port}",
                               scheme="http", region="us-east-1", allow_bucket_creation=True)
        fs.create_dir("bucket")
        yield fs, f"s3://k:s@bucket/{{}}?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


def write_trained_encoder(root: Path, tokenizer, stages: tuple[str, ...] = ("mntp", "simcse"), **settings) -> Path:
    """A tiny Mistral base with an MNTP and a SimCSE stage (or ``stages``; random LoRA weights), laid out
    as the training jobs write it; ``settings`` go to its EncoderConfig (e.g. max_length)."""
    from copy import deepcopy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from bg2vec.modeling.encoder import EncoderConfig, write_encoder_files
    from bg2vec.modeling.tiny import tiny_config

    torch.manual_seed(0)
    base = AutoModel.from_config(tiny_config("mistral", len(tokenizer)))
    base.save_pretrained(root / "base_model")
    tokenizer.save_pretrained(root / "base_model")

    def lora(model, seed):
        torch.manual_seed(seed)
        return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))

    model, entries = deepcopy(base), []
    for seed, name in enumerate(stages, 1):
        adapter = "." if seed == len(stages) else f"stages/{name}"  # the last stage's adapter at the top
        adapted = lora(model, seed)
        adapted.save_pretrained(root / adapter)
        model = adapted.merge_and_unload()
        entries.append({"name": name, "adapter": adapter, "hyperparameters": {}})
    write_encoder_files(root, tokenizer, EncoderConfig(base_model="base_model", family="mistral", stages=entries,
                                                       **settings))
    return root


def write_prepared_pages(root: Path, pages: list[dict]) -> Path:
    """A prepared data directory holding only ``pages`` (dicts of the pages/ columns) and a manifest:
    what the corpus-derived evaluation tasks read."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "pages").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(pages), root / "pages" / "part-0.parquet")
    (root / "manifest.json").write_text(json.dumps({"counts": {}}))
    return root
