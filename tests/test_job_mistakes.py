"""The job commands given what users get wrong: each exits 1 or 2 with a one-paragraph error naming what
and where (no traceback), and leaves every file as it was; an export stopped by SIGTERM (``ray job stop``)
leaves no staging folder. (The same refusals in process: tests/test_user_mistakes.py; jobs/serve.py's:
tests/test_serve.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_search import indexed, unit_vectors
from test_user_mistakes import tree
from transformers import AutoTokenizer

from conftest import REPO, write_trained_encoder

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
TINY = "configs/tiny"
CASES = {  # command, exit code, what the error says ({root}: the test's folder, {model} a trained encoder)
    "export over its own model": (["export.py", "--config", f"{TINY}/export.yaml", "model={model}", "output={model}",
                                   "overwrite=true"], 1, "output={model} is model={model}: writing there could delete"),
    "export over the folder above the model": (
        ["export.py", "--config", f"{TINY}/export.yaml", "model={model}", "output={root}", "overwrite=true"], 1,
        "output={root} contains model={model}"),
    "export under a regular file": (["export.py", "--config", f"{TINY}/export.yaml", "model={model}",
                                     "output={root}/notes.txt/export"], 1, "{root}/notes.txt is a file, not a folder"),
    "a config file that is not UTF-8": (["export.py", "--config", "{root}/latin1.yaml"], 2,
                                        "config file {root}/latin1.yaml is not UTF-8 text (byte 0xe9 on line 1)"),
    "a folder as --config": (["mntp.py", "--config", TINY], 2, f"config file {TINY} is a folder"),
    "a truncated .faiss file": (["search.py", "--config", f"{TINY}/search.yaml", "index={root}/embedded", "София"], 1,
                                "index file {root}/embedded/index/float32.faiss has 100 bytes where the index "
                                "manifest says"),
    "evaluate a model that does not exist": (["evaluate.py", "--config", f"{TINY}/evaluate.yaml",
                                              "model={root}/runs/simcse", "output={root}/eval"], 1,
                                             "model={root}/runs/simcse does not exist"),
    "a pipeline whose dump lies in its data folder": (
        ["pipeline.py", "output={root}", "prepare.dump={root}/data/d.xml"], 1,
        "output={root}/data contains dump={root}/data/d.xml"),
}


@pytest.fixture(scope="module")
def tokenizer(mistral_tokenizer_dir):
    return AutoTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.fixture
def root(tmp_path, tokenizer):
    write_trained_encoder(tmp_path / "model", tokenizer)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.xml").write_text("<mediawiki/>")
    indexed(tmp_path / "embedded", unit_vectors(np.random.default_rng(0), 20))
    faiss_file = tmp_path / "embedded/index/float32.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    return tmp_path


def job(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, f"jobs/{args[0]}", *args[1:]], cwd=REPO, text=True, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_named_error_and_changes_nothing(root, case):
    args, code, message = CASES[case]
    names = {"root": root, "model": root / "model"}
    before = tree(root)
    process = job(*[a.format(**names) for a in args])
    out, err = process.communicate(timeout=300)
    assert process.returncode == code, (out, err)
    assert err.startswith("error: ") and message.format(**names) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert tree(root) == before and sorted(p.name for p in root.iterdir()) == sorted(
        ["model", "notes.txt", "latin1.yaml", "data", "embedded"])


def test_an_export_stopped_by_sigterm_leaves_nothing(root):
    process = job("export.py", "--config", f"{TINY}/export.yaml", f"model={root / 'model'}", f"output={root / 'st'}",
                  "results=")
    deadline = time.monotonic() + 240
    while not list(root.glob(".st.tmp-*")):  # the export is writing its staging folder
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.strip().endswith("interrupted"), (out, err)
    assert not (root / "st").exists() and not list(root.glob(".*tmp-*"))
