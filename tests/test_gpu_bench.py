"""bench/gpu_mntp.py runs only on a GPU machine, which CI has not: its --smoke mode runs the same code
(plain loop, DeepSpeed ZeRO-3 over a 1-rank process group, planner memory and FLOPs) on CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bg2vec.planning import PlanConfig, flops_per_token
from conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_bench_smoke_run_measures_every_row(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from gpu_mntp import SMOKE

    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "bench/gpu_mntp.py", "--smoke", "--json", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["loop"], r["micro_batch"], r["checkpointing"]) for r in rows] == [
        ("plain PyTorch, no checkpointing", 2, False), ("plain PyTorch", 2, True), ("plain PyTorch", 4, True),
        ("DeepSpeed ZeRO-3", 2, True), ("DeepSpeed ZeRO-3", 4, True)]
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(r["micro_batch"] * 64 / r["seconds_per_step"])
        # a random model's MNTP loss over the masked positions: about ln(vocabulary)
        assert abs(r["last_loss"] - math.log(SMOKE.vocab_size)) < 0.5, r
        cfg = PlanConfig(seq_len=64, micro_batch_size=r["micro_batch"], dtype="fp32",
                         gradient_checkpointing=r["checkpointing"])
        assert r["flops_per_token"] == flops_per_token(cfg, SMOKE)
        assert r["planned_bytes"] > 0
    assert "DeepSpeed ZeRO-3" in run.stdout and "vs plain" in run.stdout
