"""The training jobs end to end, as users run them: real Ray (a cluster from `ray start --head`),
real DeepSpeed ZeRO-3 on 2 CPU workers, the tiny preset on the project's sample data."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel

from bg2vec import Bg2Vec
from conftest import REPO, free_port

pytestmark = pytest.mark.slow
# `ray start` (Ray >= 2.5x) turns on token authentication and writes the token to ~/.ray/auth_token;
# clients on the same machine read it in token mode
# The virtualenv's bin first on PATH, as if activated: `ray`, and the `python` of `ray job submit -- python ...`
RAY_ENV = {"RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
TEXTS = ["София е столицата на България.", "Дунав е втората по дължина река в Европа.",
         "Котката спи на дивана.", "Пловдив е един от най-старите градове в Европа."]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local cluster started the way users start one (`ray start --head`), on free ports, and
    stopped afterwards; only its own processes are stopped (--block ties them to this one).

    Every port Ray would otherwise take at a fixed default gets a free one: the session's other Ray
    (``ray_local``) already holds the dashboard agent's default 52365, and an agent that cannot bind
    its port never registers, so every `ray job submit` would answer "No available agent"."""
    port, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=true",
         "--disable-usage-stats"], env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while subprocess.run(["ray", "status", f"--address={address}"], env={**os.environ, **RAY_ENV},
                         capture_output=True).returncode != 0 or not _listening(agent):
        assert head.poll() is None and time.time() < deadline, "ray start --head did not come up"
        time.sleep(2)
    yield {"address": address}
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def run_job(script: str, args: list[str], ray_head, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_head["address"], "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, f"jobs/{script}.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def tiny_data(ray_head, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "data"
    done = run_job("prepare_data", ["--config", "configs/tiny/prepare.yaml", f"output={out}"], ray_head)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def logged(stdout: str, stage: str) -> list[dict]:
    """The metric lines rank 0 printed, as dicts (step first)."""
    rows = {}
    for step, rest in re.findall(rf"\[{stage}\] step (\d+)/\d+ (.*)", stdout):
        values = rest.split()
        rows[int(step)] = {k: float(v) for k, v in zip(values[::2], values[1::2])}
    return [{"step": s, **rows[s]} for s in sorted(rows)]


@pytest.fixture(scope="module")
def mntp_run(ray_head, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mntp") / "model"
    # --verbose: Ray Train's own records on the console too (the last test reads them)
    done = run_job("mntp", ["--verbose", "--config", "configs/tiny/mntp.yaml", f"data={tiny_data}", f"output={out}"],
                   ray_head)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout, done.stderr


def test_mntp_trains_the_adapter_and_the_output_is_an_encoder(mntp_run, tiny_data):
    out, stdout, _ = mntp_run
    start, *rows = logged(stdout, "mntp")
    assert start["step"] == 0 and {"val_loss", "dev_score"} <= start.keys()  # the untrained model, validated
    assert [r["step"] for r in rows][-1] == 40 and "mntp finished: step 40, 320 samples" in stdout
    # zero_stage auto: the tiny model fits every rank whole, so plain data parallelism, said once by rank 0
    assert stdout.count("[mntp] zero_stage auto -> ZeRO-0: the replicated weights fit") == 1
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1, rows  # it learns
    assert rows[-1]["val_loss"] < start["val_loss"] - 0.1  # on the same validation batches
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert {"val_loss", "lr", "tokens_per_s", "samples_per_s", "dev_score"} <= rows[-1].keys()

    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)  # only LoRA was trained
    assert all(v.numel() > 0 for v in adapter.values())  # whole, as DeepSpeed held it
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it moved
    config = json.loads((out / "bg2vec_config.json").read_text())
    assert config["stages"][0]["name"] == "mntp" and config["base_model"] == "base_model"

    # the base weights are the untouched initial ones: identical to the tiny model rebuilt from the seed
    from transformers import AutoTokenizer

    from bg2vec.training.config import ModelSettings
    from bg2vec.training.model import load_base

    rebuilt = load_base(ModelSettings(), causal_lm=True, tokenizer=AutoTokenizer.from_pretrained(out),
                        dtype=torch.float32, seed=42)
    saved = AutoModel.from_pretrained(out / "base_model").state_dict()
    for name, weight in rebuilt.model.state_dict().items():
        torch.testing.assert_close(saved[name], weight, rtol=0, atol=0)

    # peft loads the adapter itself; Bg2Vec's embeddings move away from the untrained model's
    PeftModel.from_pretrained(AutoModel.from_pretrained(out / "base_model"), out)
    trained = Bg2Vec.from_pretrained(out).encode(TEXTS)
    untrained = Bg2Vec.from_pretrained(out / "base_model").encode(TEXTS)
    assert trained.shape == (4, 128) and np.isfinite(trained).all()
    assert np.abs(trained - untrained).max() > 1e-3
    # the TensorBoard event file is in the run directory
    assert list((out.parent / "model.runs" / "mntp" / "tensorboard").glob("events.out.tfevents.*"))


def test_mntp_run_logs_each_line_once_and_reports_evaluations_to_ray_train(mntp_run):
    _, stdout, stderr = mntp_run
    assert stdout.count("[mntp] step 40/40 ") == 1 and stdout.count("[mntp] wrote ") == 1  # _compat.worker_print
    # a warning of a per-step call, once per worker: no subprocess per step resets the warning registry
    assert (stdout + stderr).count("`torch.distributed.reduce_scatter_tensor` is deprecated") <= 2
    # Ray Train gets the evaluations and checkpoints (eval_every = checkpoint_every = 20), not every log
    # window (log_every=5): report() blocks until the controller's next poll
    reported = re.findall(r"Reporting training result \d+: .*?'step': (\d+)", stdout + stderr)
    assert sorted(set(map(int, reported))) == [20, 40]


def test_simcse_starts_from_mntp_and_trains(mntp_run, tiny_data, ray_head, tmp_path):
    mntp, _, _ = mntp_run
    out = tmp_path / "simcse"
    done = run_job("simcse", ["--config", "configs/tiny/simcse.yaml", f"data={tiny_data}", f"mntp={mntp}",
                              f"output={out}"], ray_head)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    start, *rows = logged(done.stdout, "simcse")
    assert start["step"] == 0 and "dev_score" in start and rows[-1]["step"] == 30
    # The contrastive loss of 16 tiny-model texts depends on which texts share a batch (it rose in some
    # runs while the model learned), and the sample's 11 validation paragraphs fill no batch of 8 per
    # worker; the in-batch accuracy (positive ranked first among 31) is the steady signal of learning.
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.2, rows
    config = json.loads((out / "bg2vec_config.json").read_text())
    assert [s["name"] for s in config["stages"]] == ["mntp", "simcse"]
    assert config["stages"][0]["adapter"] == "stages/mntp" and config["stages"][1]["hyperparameters"]["temperature"]
    mntp_only = Bg2Vec.from_pretrained(mntp).encode(TEXTS)
    final = Bg2Vec.from_pretrained(out).encode(TEXTS)
    assert np.abs(final - mntp_only).max() > 1e-3


def _wait_for(path_glob: Path, pattern: str, proc: subprocess.Popen, timeout=600) -> None:
    deadline = time.time() + timeout
    while not list(path_glob.glob(pattern)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, f"no {pattern} under {path_glob}"
        time.sleep(1)
    time.sleep(2)  # the checkpoint is registered once every worker has uploaded


def _popen_job(args: list[str], ray_head) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_head["address"], "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "jobs/mntp.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


# 60 steps, checkpoints every 10: the tests interrupt a run at its first checkpoint, with 50 steps still to go.
# ZeRO-3 (auto would choose ZeRO-0 here): its sharded checkpoints and adapters gathered from the shards
SHORT = ["--config", "configs/tiny/mntp.yaml", "max_steps=60", "run.checkpoint_every=10", "run.eval_every=0",
         "zero_stage=3"]


def test_a_killed_run_started_again_resumes_from_its_last_checkpoint(ray_head, tiny_data, tmp_path):
    args = [*SHORT, f"data={tiny_data}", f"output={tmp_path / 'model'}"]
    first = _popen_job(args, ray_head)
    _wait_for(tmp_path / "model.runs" / "mntp", "checkpoint_0000010", first)
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies; its workers go with it
    first.wait()
    assert not (tmp_path / "model").exists()
    time.sleep(5)
    again = run_job("mntp", args, ray_head)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = re.search(r"resumed from \S+ at step (\d+) \((\d+) samples seen\)", again.stdout)
    assert resumed and int(resumed.group(1)) >= 10 and int(resumed.group(1)) % 10 == 0
    assert int(resumed.group(2)) == 8 * int(resumed.group(1))
    first_step = logged(again.stdout, "mntp")[0]["step"]
    assert first_step > int(resumed.group(1))  # no step was repeated
    assert "mntp finished: step 60, 480 samples" in again.stdout  # as an uninterrupted run
    assert (tmp_path / "model" / "bg2vec_config.json").is_file()
    adapter = load_file(tmp_path / "model" / "adapter_model.safetensors")
    assert adapter and all(v.numel() > 0 for v in adapter.values())  # gathered whole from the ZeRO-3 shards


def test_a_dead_worker_makes_ray_train_restart_from_the_checkpoint(ray_head, tiny_data, tmp_path):
    job = _popen_job([*SHORT, f"data={tiny_data}", f"output={tmp_path / 'model'}"], ray_head)
    _wait_for(tmp_path / "model.runs" / "mntp", "checkpoint_0000010", job)
    workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
    assert len(workers) == 2
    workers[-1].kill()
    stdout, _ = job.communicate(timeout=900)
    assert job.returncode == 0, stdout[-4000:]
    assert re.search(r"resumed from \S+checkpoint_00000[1-5]0 at step [1-5]0", stdout), stdout[-4000:]
    assert "mntp finished: step 60, 480 samples" in stdout  # as an uninterrupted run


def test_nan_loss_stops_the_run_with_a_clear_error(ray_head, tiny_data, tmp_path):
    done = run_job("mntp", ["--config", "configs/tiny/mntp.yaml", f"data={tiny_data}", f"output={tmp_path / 'm'}",
                            "scaling.num_workers=1", "optim.lr=1e30", "optim.warmup_steps=0", "max_steps=8",
                            "run.checkpoint_every=1", "run.log_every=1", "lora.dropout=0"], ray_head)
    assert done.returncode == 1, done.stdout[-2000:]
    assert re.search(r"error: mntp: the mntp loss became (nan|inf|-inf) at step \d+", done.stderr), done.stderr[-2000:]
    assert "last checkpoint:" in done.stderr and "checkpoint_000000" in done.stderr
    assert not (tmp_path / "m").exists()


def test_a_run_without_a_cluster_starts_its_own_ray_and_its_console_holds_the_run(tiny_data, tmp_path):
    """`python jobs/mntp.py` with no RAY_ADDRESS: a local Ray of its own, with its dashboard, which Ray
    Train's placement-group cleaner needs (ray_session.start_local_ray): without it the console got a
    State API warning every second, or a traceback from stopping the cleaner at the end."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "jobs/mntp.py", "--config", "configs/tiny/mntp.yaml", f"data={tiny_data}",
                           f"output={tmp_path / 'model'}", "max_steps=30", "scaling.num_workers=1",
                           "run.eval_every=0", "run.checkpoint_every=30"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    assert "mntp finished: step 30, 240 samples" in done.stdout
    assert re.search(r"started a local Ray \(dashboard: http://127\.0\.0\.1:\d+\)", done.stdout)
    assert "State API" not in console and "PlacementGroupCleaner" not in console, console[-3000:]


def test_bad_inputs_are_named_before_anything_runs(tmp_path, tiny_data, ray_head):
    done = run_job("mntp", ["--config", "configs/tiny/mntp.yaml", f"data={tmp_path}", "output=x"], ray_head)
    assert done.returncode == 1 and "is not a prepared data directory (no manifest.json)" in done.stderr
    done = run_job("simcse", ["--config", "configs/tiny/simcse.yaml", f"data={tiny_data}", f"mntp={tmp_path}",
                              "output=x"], ray_head)
    assert done.returncode == 1 and "is not a trained MNTP directory" in done.stderr
    done = run_job("mntp", ["--config", "configs/tiny/mntp.yaml", f"data={tiny_data}", "output=x", "mask_ratio=2"],
                   ray_head)
    assert done.returncode == 2 and "mask_ratio must be in (0, 1)" in done.stderr
