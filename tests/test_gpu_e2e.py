"""bench/gpu_e2e.py, the GPU machine's end-to-end run, rehearsed on CPU (2 gloo workers, fp32) so that it cannot
rot between the runs on a GPU: every stage submitted to `ray start --head`, its output checked by the script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_the_end_to_end_script_passes_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_e2e.py", "--cpu", "--workdir", str(tmp_path / "work"),
                           "--json", str(tmp_path / "e2e.json")], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "every stage's output checked: PASSED" in done.stdout
    rows = {r["stage"]: r for r in json.loads((tmp_path / "e2e.json").read_text())["rows"]}
    assert list(rows) == ["prepare", "MNTP zero_stage=auto", "SimCSE", "pairs", "contrastive", "evaluate", "embed",
                          "serve"]
    mntp = rows["MNTP zero_stage=auto"]
    assert mntp["zero_stage"] == 0 and mntp["final_step"] == 4 and mntp["tokens_per_s"] > 0
    assert mntp["planned_gib"] > 0 and mntp["flops_per_token"] > 0
    for line in ("| stage | wall s | ZeRO | tokens/s | peak GiB (planned) | MFU | checked |", "| serve |"):
        assert line in done.stdout
    assert "Traceback" not in done.stderr and "WARNING" not in done.stdout, done.stdout[-3000:]
