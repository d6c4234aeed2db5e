"""`make demo` as a new user meets it: a copy of the repository with nothing beside it (no ../shared,
no BG2VEC_SHARED, an empty download cache, the hub offline), and a console that reads as a story."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

NOISE = ("UNEXPECTED", "FutureWarning", "DeprecationWarning", "Traceback", "TrainingReport(", "core_worker.cc",
         "logging_progress", "shared/data")


def clone_of_the_repository(target):
    """The files a `git clone` of this checkout would hold (tracked, plus new files not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.mark.slow
def test_the_demo_runs_from_a_bare_clone_and_tells_its_story(tmp_path):
    clone = clone_of_the_repository(tmp_path / "clone")
    assert not (tmp_path / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("BG2VEC_SHARED", "RAY_ADDRESS", "BG2VEC_VERBOSE")}
    env.update(PYTHONPATH=str(clone), BG2VEC_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    imported = subprocess.run([sys.executable, "-c", "import bg2vec; print(bg2vec.__file__)"], cwd=clone, env=env,
                              capture_output=True, text=True, check=True).stdout.strip()
    assert imported == str(clone / "bg2vec" / "__init__.py")  # the copy's code and resources, not this checkout's

    done = subprocess.run([sys.executable, "jobs/pipeline.py", "--preset", "tiny", "output=runs/demo"], cwd=clone,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    console = done.stdout
    assert done.returncode == 0, console[-5000:]
    report = clone / "runs" / "demo" / "eval"
    results = json.loads((report / "results.json").read_text())
    assert list(results) == ["base: causal-last", "base: causal-mean", "base: bidirectional", "MNTP", "MNTP + pairs",
                             "MNTP + SimCSE"]
    tasks = ["WikiLeadRetrieval", "WikiTitleRetrieval", "WikiCategoryClassification", "WikiCategoryClustering",
             "HardTriples"]
    assert all(list(scores) == tasks for scores in results.values())
    assert 0 < results["MNTP + pairs"]["WikiLeadRetrieval"]["ndcg_at_10"] <= 1
    assert (report / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "overlaps training text" in (report / "report.md").read_text()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.tsv"))  # nothing downloaded

    assert "\x1b[" not in console  # no ANSI colours in a pipe
    lines = console.splitlines()
    noisy = [line for line in lines if any(word in line for word in NOISE)]
    assert not noisy, "\n".join(noisy[:20])
    assert len(lines) < 150, console
    for stage in ("prepare", "mntp", "simcse", "pairs", "contrastive", "evaluate", "embed"):
        assert f"[pipeline] {stage}" in console
    assert "[mntp] step 40/40" in console and "[simcse] step 30/30" in console and "[contrastive] step 20/20" in console
    assert "| MNTP + pairs |" in console and "report: runs/demo/eval/report.md" in console
