"""Every job on one machine's GPUs, submitted to `ray start --head` as the README's runbook does, each output checked.

    python3 bench/gpu_kit_install.py && source /tmp/bg2vec-gpu/bin/activate   # on the GPU machine: the kit first
    python bench/gpu_e2e.py                        # all GPUs of this machine, bf16, NCCL: about 6 minutes
    python bench/gpu_e2e.py --cpu                  # the same on CPU (2 gloo workers, fp32): tests/test_gpu_e2e.py
    python bench/gpu_e2e.py --json runs/e2e.json   # also keep every number

The stages, each through `ray job submit --working-dir . -- python jobs/...`:
prepare (the bundled sample dump, its own BPE tokenizer) -> a random base of real shapes built here from a
config (GPU: BgGPT-7B's layer shape, 4 of its 32 layers, the tokenizer's vocabulary; CPU: a toy Mistral) ->
MNTP with zero_stage auto, 2 and 3 (CPU: auto only) -> SimCSE -> pairs with hard negatives mined by the MNTP
encoder (a GPU Ray Data actor) -> the contrastive stage -> evaluate (the entrypoint on a GPU) -> embed (GPU
actors) -> serve (a GPU replica) answering the official ``openai`` client.

Checked, not just exit codes: each training run reached its last step, chose the ZeRO stage expected and
wrote an encoder whose vectors are finite; the pairs have hard negatives; the evaluation scored every task;
the embedded vectors equal Bg2Vec.encode's of the same passages and the served ones Bg2Vec.encode's of the
same texts (fp32 CPU encode vs the stage's dtype: cosine >= 0.99 on GPU, 1e-4 on CPU). The table: wall time,
tokens/s (the median logged window after the first), the peak GPU memory torch allocated against the
planner's estimate for the same run (``bg2vec.training.zero_stage.plan_config``, without the fixed
overhead) and MFU = planner FLOPs per token x tokens/s per GPU / the datasheet's bf16 peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bg2vec._compat import deepspeed_cpu_accelerator
from bg2vec.console import setup_console
from bg2vec.planning import Architecture, gpu_of_device
from bg2vec.ray_session import free_port

REPO = Path(__file__).resolve().parents[1]
TOY = Architecture("mistral", 4000, 64, 128, 2, 4, 2, 16, tie_word_embeddings=False)  # the CPU run's base
TEXTS = ["София е столицата на България.", "Дунав е втората по дължина река в Европа."]


@dataclasses.dataclass(frozen=True)
class Profile:
    """What differs between the GPU run and its CPU rehearsal; everything else is the same code."""

    gpus: int
    zero_stages: tuple[str, ...]
    layers: int               # of the base's shape (GPU: BgGPT-7B's layers; CPU: a toy Mistral's)
    micro_batch: int          # blocks of 128 tokens per worker per forward pass
    steps: int
    log_every: int

    @property
    def workers(self) -> int:
        return self.gpus or 2

    def scaling(self) -> list[str]:
        return [f"scaling.num_workers={self.workers}", f"scaling.use_gpu={bool(self.gpus)}",
                f"scaling.cpus_per_worker={2 if self.gpus else 0.5}"]

    def training(self) -> list[str]:
        """A training job's overrides: one micro-batch per worker a step, evaluated and saved at the last."""
        return [*self.scaling(), f"global_batch_size={self.micro_batch * self.workers}",
                f"micro_batch_size={self.micro_batch}", f"max_steps={self.steps}", f"run.log_every={self.log_every}",
                f"run.eval_every={self.steps}", f"run.checkpoint_every={self.steps}"]


def gpu_profile(gpus: int) -> Profile:
    return Profile(gpus=gpus, zero_stages=("auto", "2", "3"), layers=4, micro_batch=32, steps=30, log_every=5)


CPU_PROFILE = Profile(gpus=0, zero_stages=("auto",), layers=2, micro_batch=4, steps=4, log_every=2)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def ray_head(profile: Profile, env: dict, logs: Path):
    """`ray start --head` on free ports (the machine's GPUs, or 2 CPUs), stopped at the end with its processes."""
    port, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    cpus = os.cpu_count() if profile.gpus else 2
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}", "--dashboard-host=127.0.0.1",
         f"--num-cpus={cpus}", f"--num-gpus={profile.gpus}", "--include-dashboard=true", "--disable-usage-stats"],
        env=env, stdout=(logs / "ray-head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while subprocess.run(["ray", "status", f"--address=127.0.0.1:{port}"], env=env,
                             capture_output=True).returncode != 0 or not listening(agent):
            if head.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"ray start --head did not come up: {logs / 'ray-head.log'}")
            time.sleep(2)
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


class Jobs:
    """`ray job submit` of each stage; every job's output is kept in logs/ and shown when it fails."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.rows = env, logs, []

    def submit(self, name: str, script: str, *args: str, entrypoint_gpus: int = 0, timeout: int = 1200) -> str:
        print(f"[e2e] {name}: jobs/{script}.py", flush=True)
        command = ["ray", "job", "submit", "--working-dir", ".",
                   *([f"--entrypoint-num-gpus={entrypoint_gpus}"] if entrypoint_gpus else []),
                   "--", "python", f"jobs/{script}.py", *args]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - started
        log = self.logs / f"{name.replace(' ', '_')}.log"
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0 or not re.search(r"Job '\w+' succeeded", done.stdout + done.stderr):
            sys.exit(f"[e2e] {name} failed (exit {done.returncode}); its output ({log}) ends:\n"
                     f"{(done.stdout + done.stderr)[-4000:]}")
        self.rows.append({"stage": name, "seconds": seconds})
        return done.stdout


def training_metrics(output: str, stage: str) -> dict:
    """The last step, the ZeRO stage chosen and the median tokens/s and peak memory of the logged windows."""
    windows = []
    for tail in re.findall(rf"\[{stage}\] step \d+/\d+ (.*)", output):
        words = tail.split()
        windows.append({k: float(v) for k, v in zip(words[::2], words[1::2]) if re.fullmatch(r"[-+\d.e]+", v)})
    windows = [w for w in windows if "tokens_per_s" in w]
    steps = re.findall(rf"{stage} finished: step (\d+)", output)
    zero = re.search(r"ZeRO-(\d)", output)
    rates = [w["tokens_per_s"] for w in windows[1:] or windows]
    return {"final_step": int(steps[-1]) if steps else None, "zero_stage": int(zero.group(1)) if zero else None,
            "tokens_per_s": statistics.median(rates) if rates else None,
            "gpu_mem_gib": max((w["gpu_mem_gib"] for w in windows if "gpu_mem_gib" in w), default=None)}


def build_base(work: Path, profile: Profile) -> Path:
    """A random decoder of real shapes with the prepared data's tokenizer, saved as a model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bg2vec.planning import PRESETS, transformers_config

    tokenizer = AutoTokenizer.from_pretrained(work / "data" / "tokenizer")
    shape = PRESETS["bggpt-7b"] if profile.gpus else TOY
    arch = dataclasses.replace(shape, num_hidden_layers=profile.layers, vocab_size=len(tokenizer))
    config = transformers_config(arch, sliding_window=None, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if profile.gpus else torch.float32)
    base = work / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    params = sum(p.numel() for p in model.parameters())
    print(f"[e2e] base: {'BgGPT-7B' if profile.gpus else 'a toy Mistral'}'s shape, {profile.layers} layers, "
          f"vocabulary {len(tokenizer)}: {params / 1e6:.0f} M parameters (random)", flush=True)
    return base


def planned(config_yaml: str, overrides: list[str], base: Path, seq_len: int, profile: Profile,
            zero_stage: int) -> dict:
    """The planner's memory per GPU (without its fixed overhead) and FLOPs per token for this run."""
    from transformers import AutoConfig

    from bg2vec.config import load_config
    from bg2vec.planning.estimate import flops_per_token, memory
    from bg2vec.planning.shapes import architecture_of
    from bg2vec.training.config import MNTPConfig, SimCSEConfig
    from bg2vec.training.zero_stage import plan_config

    cls = MNTPConfig if "mntp" in config_yaml else SimCSEConfig
    cfg = load_config(cls, str(REPO / config_yaml), overrides)
    model_config = AutoConfig.from_pretrained(base)
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_config(cfg, model_config, seq_len=seq_len, bf16=bool(profile.gpus), world=profile.workers,
                           local_world=profile.workers, use_gpu=bool(profile.gpus), config_dir=Path(tmp))
        plan = dataclasses.replace(plan, zero_stage=zero_stage, overhead_gib=0.0)
        arch = architecture_of(model_config)
        result = {"planned_gib": memory(plan, arch).total / 2**30, "flops_per_token": flops_per_token(plan, arch)}
    if profile.gpus:
        import torch

        gpu = gpu_of_device(torch.cuda.get_device_name(0))
        result["peak_tflops"] = gpu.peak_tflops if gpu else None
    return result


def check_encoder(path: Path) -> np.ndarray:
    """The encoder at ``path`` loads and gives finite vectors (fp32, CPU)."""
    from bg2vec import Bg2Vec

    vectors = Bg2Vec.from_pretrained(path, device="cpu").encode(TEXTS)
    assert np.isfinite(vectors).all(), (path, vectors)
    return vectors


def close(got: np.ndarray, want: np.ndarray, gpu: bool, what: str) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if gpu:
        cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cosine.min() >= 0.99, f"{what}: cosine to Bg2Vec.encode {cosine.min():.4f} < 0.99"
    else:
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=what)


def serve_and_ask(jobs: Jobs, encoder: Path, profile: Profile) -> None:
    """jobs/serve.py as a submitted job (no wait), asked through the openai client, then `ray job stop`."""
    import openai

    port = free_port()
    print("[e2e] serve: jobs/serve.py", flush=True)
    started = time.perf_counter()
    submitted = subprocess.run(
        ["ray", "job", "submit", "--no-wait", "--working-dir", ".", "--", "python", "jobs/serve.py", "--config",
         "configs/tiny/serve.yaml", f"model={encoder}", f"port={port}",
         *([] if profile.gpus else ["cpus_per_replica=0.5"])],
        cwd=REPO, env=jobs.env, capture_output=True, text=True, timeout=300)
    job = re.search(r"Job '(\w+)' submitted successfully", submitted.stdout + submitted.stderr)
    assert job, submitted.stdout + submitted.stderr
    job = job.group(1)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            status = subprocess.run(["ray", "job", "status", job], env=jobs.env, capture_output=True, text=True)
            if re.search(r"FAILED|STOPPED", status.stdout) or time.monotonic() > deadline:
                logs = subprocess.run(["ray", "job", "logs", job], env=jobs.env, capture_output=True, text=True)
                sys.exit(f"[e2e] the server did not come up:\n{logs.stdout[-4000:]}")
            time.sleep(2)
        ready = time.perf_counter() - started
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        answer = client.embeddings.create(model="bg2vec", input=TEXTS)
        vectors = np.array([d.embedding for d in answer.data])
        close(vectors, check_encoder(encoder), bool(profile.gpus), "served vectors")
        jobs.rows.append({"stage": "serve", "seconds": ready, "note": f"ready; {len(TEXTS)} texts x "
                          f"{vectors.shape[1]} dims through openai, equal to Bg2Vec.encode's"})
    finally:
        subprocess.run(["ray", "job", "stop", job], env=jobs.env, capture_output=True, timeout=120)


def run(work: Path, profile: Profile) -> list[dict]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gpu = bool(profile.gpus)
    with ray_head(profile, env, logs) as dashboard:
        jobs = Jobs({**env, "RAY_ADDRESS": dashboard}, logs)
        data = work / "data"
        jobs.submit("prepare", "prepare_data", "--config", "configs/tiny/prepare.yaml", f"output={data}")
        prepared = json.loads((data / "manifest.json").read_text())
        assert (data / "tokenizer").is_dir() and prepared["counts"]["blocks"]["train"] > 0, prepared["counts"]
        seq_len = prepared["seq_len"]
        base = build_base(work, profile)

        mntp = None
        for zero in profile.zero_stages:
            out = work / f"mntp-zero{zero}"
            overrides = [f"data={data}", f"model.name_or_path={base}", f"zero_stage={zero}", "lora.r=16",
                         "lora.alpha=32", *profile.training()]
            output = jobs.submit(f"MNTP zero_stage={zero}", "mntp", "--config", "configs/tiny/mntp.yaml",
                                 *overrides, f"output={out}")
            metrics = training_metrics(output, "mntp")
            expected = 0 if zero == "auto" else int(zero)  # the base fits every device here: auto is ZeRO-0
            assert metrics["final_step"] == profile.steps and metrics["zero_stage"] == expected, metrics
            jobs.rows[-1] |= metrics | planned("configs/tiny/mntp.yaml", overrides, base, seq_len, profile, expected)
            check_encoder(out)
            chosen = "as auto chose" if zero == "auto" else "as set"
            jobs.rows[-1]["note"] = f"step {profile.steps}, ZeRO-{expected} {chosen}"
            mntp = mntp or out

        simcse = work / "simcse"
        overrides = [f"data={data}", f"mntp={mntp}", *profile.training()]
        output = jobs.submit("SimCSE", "simcse", "--config", "configs/tiny/simcse.yaml", *overrides, f"output={simcse}")
        metrics = training_metrics(output, "simcse")
        assert metrics["final_step"] == profile.steps, metrics
        jobs.rows[-1] |= metrics | planned("configs/tiny/simcse.yaml", overrides, base, seq_len, profile,
                                           metrics["zero_stage"])
        check_encoder(simcse)
        jobs.rows[-1]["note"] = f"step {profile.steps}, from MNTP"

        pairs = work / "pairs"
        jobs.submit("pairs", "pairs", "--config", "configs/tiny/pairs.yaml", f"data={data}", f"model={mntp}",
                    f"output={pairs}")
        manifest = json.loads((pairs / "manifest.json").read_text())
        mined = manifest["negatives"]["pairs_with_negatives"]["train"]
        assert sum(manifest["counts"]["train"].values()) > 0 and mined > 0, manifest
        jobs.rows[-1]["note"] = f"{sum(manifest['counts']['train'].values())} train pairs, {mined} with hard negatives"

        contrastive = work / "contrastive"
        output = jobs.submit("contrastive", "contrastive", "--config", "configs/tiny/contrastive.yaml",
                             f"pairs={pairs}", f"mntp={mntp}", *profile.training(), f"output={contrastive}")
        metrics = training_metrics(output, "contrastive")
        assert metrics["final_step"] == profile.steps, metrics
        jobs.rows[-1] |= metrics
        check_encoder(contrastive)
        jobs.rows[-1]["note"] = f"step {profile.steps}, from MNTP, with the mined hard negatives"

        evaluation = work / "eval"
        jobs.submit("evaluate", "evaluate", "--config", "configs/tiny/evaluate.yaml", f"model={contrastive}",
                    f"data={data}", "baselines=[contrastive]", f"output={evaluation}", entrypoint_gpus=int(gpu))
        (name, tasks), = json.loads((evaluation / "results.json").read_text()).items()  # the encoder's row only
        scores = [s for task in tasks.values() for k, s in task.items() if k in ("ndcg_at_10", "accuracy", "v_measure")]
        assert len(tasks) == len(scores) == 5 and all(0 <= s <= 1 for s in scores), tasks
        jobs.rows[-1]["note"] = f"{len(tasks)} tasks scored ({name!r})"

        embeddings = work / "embeddings"
        jobs.submit("embed", "embed", "--config", "configs/tiny/embed.yaml", f"model={contrastive}",
                    f"input={data}", f"output={embeddings}", *([] if gpu else ["cpus_per_actor=0.5"]))
        check_embeddings(embeddings, contrastive, gpu)
        jobs.rows[-1]["note"] = "vectors equal Bg2Vec.encode's of the same passages"

        serve_and_ask(jobs, contrastive, profile)
    return jobs.rows


def check_embeddings(embeddings: Path, encoder: Path, gpu: bool) -> None:
    import pyarrow.parquet as pq

    from bg2vec import Bg2Vec

    manifest = json.loads((embeddings / "manifest.json").read_text())
    table = pq.read_table(embeddings / "vectors")
    assert table.num_rows == manifest["passages"] > 0, (table.num_rows, manifest["passages"])
    got = np.stack(table.column("vector").to_numpy(zero_copy_only=False)[:8])
    want = Bg2Vec.from_pretrained(encoder, device="cpu").encode(table.column("passage").to_pylist()[:8])
    close(got, want, gpu, "embedded vectors")


def table(rows: list[dict], profile: Profile) -> str:
    def num(value, fmt):
        return "" if value is None else format(value, fmt)

    lines = ["| stage | wall s | ZeRO | tokens/s | peak GiB (planned) | MFU | checked |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        memory = (f"{r['gpu_mem_gib']:.1f} ({r['planned_gib']:.1f})" if r.get("gpu_mem_gib") is not None
                  else (f"- ({r['planned_gib']:.2f})" if "planned_gib" in r else ""))
        mfu = ""
        if profile.gpus and r.get("tokens_per_s") and r.get("peak_tflops"):
            mfu = f"{100 * r['flops_per_token'] * r['tokens_per_s'] / profile.gpus / (r['peak_tflops'] * 1e12):.1f}%"
        lines.append(f"| {r['stage']} | {r['seconds']:.0f} | {num(r.get('zero_stage'), 'd')} | "
                     f"{num(r.get('tokens_per_s'), ',.0f')} | {memory} | {mfu} | {r.get('note', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="no GPU: 2 gloo workers, fp32, a few steps per stage")
    parser.add_argument("--workdir", type=Path, help="where the stages write (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args()
    setup_console()  # the libraries' progress bars and chatter off, as in the jobs
    if args.cpu:
        deepspeed_cpu_accelerator()  # transformers imports DeepSpeed here too (building the base)
        profile = CPU_PROFILE
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU here: --cpu runs the same stages on CPU")
        profile = gpu_profile(torch.cuda.device_count())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bg2vec-e2e-") as tmp:
        work = (args.workdir or Path(tmp)).resolve()
        rows = run(work, profile)
    device = "CPU (gloo, fp32)" if args.cpu else f"{profile.gpus} x {__import__('torch').cuda.get_device_name(0)}"
    print(f"\n{device}, {time.perf_counter() - started:.0f} s in all:\n{table(rows, profile)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    print("[e2e] every stage's output checked: PASSED")


if __name__ == "__main__":
    main()
