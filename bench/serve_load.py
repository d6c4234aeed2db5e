"""Serving load: the embeddings server (jobs/serve.py's application) under concurrent clients vs in-process
Bg2Vec.encode, same model, same texts, same run.

    python bench/serve_load.py           # about 3 minutes on 2 cores

Model: a small random-weight Mistral (4 layers, hidden 256) with the real Mistral-7B-Instruct-v0.3
tokenizer, as in bench/encode.py. Texts: SIB-200's Bulgarian sentences from ../shared (or
$BG2VEC_SHARED), one per request (query traffic). Load: 16 client threads, each with its own OpenAI
client on localhost, sending 640 requests in all as fast as they are answered; the server is one
replica of 1 CPU (so 1 torch thread: Ray sets OMP_NUM_THREADS from num_cpus) on a local Ray, batching
the inputs of concurrent requests (serve.batch, 20 ms wait) or not (max_batch_size=1). Clients, Serve's
proxy and the replica share the machine's CPUs; a replica of 2 CPUs on 2 cores spun its torch threads
against the proxy and ran 3x slower. In-process encode runs on 1 torch thread too (the same compute per
model; on a loaded machine 2 threads also spin). Baseline:
in-process ``encode`` of one text per call, one after the other (what a process without a server
does per query); the offline row is ``encode`` of all texts in batches of 32, the bound on throughput.
Latency is per request as the client sees it (in-process: per call).

Mixed traffic (the second table): the same 640 requests on the batching server again, while one more
client sends a large or hostile request every LARGE_EVERY_S seconds until the 640 are answered, in turn:
one input of 100,000 characters (accepted: cut to the encoder's 512 tokens before tokenising), a 20 MB
body (over max_request_bytes: 413), one input of 100,001 characters (over max_input_chars: 400) and a
50 MB string (413 from its Content-Length, before it is read). Their size is what they test, not compute:
a client sending 512-token inputs back to back takes the CPU from everyone on any server. Checked: every
normal request answered 200 (none lost or dropped), their p99 within 2x of the clean run's, the replica's
peak memory (``ru_maxrss``, from /stats) under MEMORY_BOUND_MB.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import torch
from encode import write_small_model  # bench/ is the script's directory, first on sys.path
from transformers import AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.ray_session import free_port
from bg2vec.serving.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BG2VEC_SHARED", REPO.parent / "shared"))
CLIENTS, REQUESTS, BATCH = 16, 640, 32
LARGE_EVERY_S, MAX_INPUT_CHARS = 1.0, 100_000
MEMORY_BOUND_MB = 1500  # the replica's peak: the model and torch take about 600 MB of it


def sentences() -> list[str]:
    with open(SHARED / "data/eval/sib200_bul/train.tsv", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f, delimiter="\t")]


def in_process(encoder: Bg2Vec, texts: list[str]) -> dict:
    latencies = []
    start = time.perf_counter()
    for text in texts:
        began = time.perf_counter()
        encoder.encode([text])
        latencies.append(time.perf_counter() - began)
    return {"seconds": time.perf_counter() - start, "latencies": latencies}


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
        return json.loads(response.read())


def load(url: str, texts: list[str]) -> dict:
    clients = [openai.OpenAI(base_url=url, api_key="unused", max_retries=0) for _ in range(CLIENTS)]

    def one(i: int) -> float:
        began = time.perf_counter()
        clients[i % CLIENTS].embeddings.create(model="bg2vec", input=texts[i])
        return time.perf_counter() - began

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(2 * CLIENTS)))  # warm: connections, the replica's first batches
        before = stats(url)
        start = time.perf_counter()
        latencies = list(pool.map(one, range(len(texts))))
        seconds = time.perf_counter() - start
    after = stats(url)
    mean_batch = (after["inputs"] - before["inputs"]) / max(1, after["batches"] - before["batches"])
    return {"seconds": seconds, "latencies": latencies, "mean_batch": mean_batch}


def post(url: str, body: bytes) -> str:
    """The HTTP status of one embeddings request (or the error that stopped it), as text."""
    request = urllib.request.Request(url + "/embeddings", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            return str(response.status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except OSError as e:  # the server may close the connection of a body it refused before all of it was sent
        return type(e).__name__


def mixed(url: str, texts: list[str]) -> dict:
    """``load`` again while one client sends a large or hostile request every LARGE_EVERY_S seconds."""
    long = (" ".join(texts) * 20)[:MAX_INPUT_CHARS]
    kinds = {"1 input of 100,000 chars": {"input": [long]},
             "a 20 MB body": {"input": [long] * 110},
             "an input of 100,001 chars": {"input": [long + "."]},
             "a 50 MB string": {"input": "б" * (25 << 20)}}
    bodies = {k: json.dumps({"model": "bg2vec", **v}, ensure_ascii=False).encode() for k, v in kinds.items()}
    outcomes: Counter[tuple[str, str]] = Counter()
    stop = threading.Event()

    def large() -> None:
        for n in range(10**9):
            kind = list(bodies)[n % len(bodies)]
            outcomes[kind, post(url, bodies[kind])] += 1
            if stop.wait(LARGE_EVERY_S):
                return

    sender = threading.Thread(target=large)
    sender.start()
    try:
        measured = load(url, texts)
    finally:
        stop.set()
        sender.join()
    return {**measured, "outcomes": outcomes}


def main() -> None:
    from ray import serve

    from bg2vec.serving.launch import deploy

    texts = (sentences() * 2)[:REQUESTS]
    tokenizer = AutoTokenizer.from_pretrained(SHARED / "data/tokenizers/mistral-7b-instruct-v0.3")
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    cpus = os.cpu_count()
    torch.set_num_threads(1)  # as the replica's
    with tempfile.TemporaryDirectory() as model_dir:
        write_small_model(model_dir, tokenizer)
        encoder = Bg2Vec.from_pretrained(model_dir, device="cpu")
        encoder.encode(texts[:BATCH], batch_size=BATCH)  # warm
        rows = {"in-process encode, 1 text per call": in_process(encoder, texts)}
        start = time.perf_counter()
        encoder.encode(texts, batch_size=BATCH)
        rows[f"in-process encode, batches of {BATCH} (offline)"] = {"seconds": time.perf_counter() - start}
        port = free_port()
        for batch in (BATCH, 1):
            cfg = ServeConfig(model=model_dir, served_name="bench", port=port, max_batch_size=batch,
                              batch_wait_timeout_s=0.02, max_ongoing_requests=2 * CLIENTS,
                              max_input_chars=MAX_INPUT_CHARS, cpus_per_replica=1)
            url = deploy(cfg)
            measured = load(url, texts)
            label = f"server, {CLIENTS} clients, max_batch_size {batch}"
            rows[f"{label} (mean batch {measured['mean_batch']:.1f})"] = measured
            if batch == BATCH:
                clean = {**measured, "peak_memory_mb": stats(url)["peak_memory_mb"]}
                loaded = {**mixed(url, texts), "peak_memory_mb": stats(url)["peak_memory_mb"]}
            serve.delete(cfg.name)  # one server at a time
        serve.shutdown()
    base = rows["in-process encode, 1 text per call"]["seconds"]
    print(f"\n{len(texts)} requests of one Bulgarian sentence each ({np.mean(lengths):.0f} tokens on average, "
          f"max {max(lengths)}); {cpus} CPUs, in-process encode on {torch.get_num_threads()} torch threads; "
          f"model: 4-layer hidden-256 Mistral, float32; replica: 1 CPU\n")
    print(f"  {'path':58s} {'seconds':>8s} {'texts/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'vs 1 per call':>14s}")
    for name, row in rows.items():
        latency = ([f"{np.percentile(row['latencies'], q) * 1000:7.1f}" for q in (50, 99)]
                   if "latencies" in row else [f"{'-':>7s}"] * 2)
        print(f"  {name:58s} {row['seconds']:8.2f} {len(texts) / row['seconds']:8.1f} {' '.join(latency)} "
              f"{base / row['seconds']:13.2f}x")
    print_mixed(clean, loaded, len(texts))


def print_mixed(clean: dict, loaded: dict, requests: int) -> None:
    p99 = {name: np.percentile(row["latencies"], 99) * 1000 for name, row in (("clean", clean), ("mixed", loaded))}
    print(f"\nmixed traffic: the {requests} requests again, with a large or hostile request every {LARGE_EVERY_S:g} s "
          f"meanwhile (max_batch_size {BATCH}, max_input_chars {MAX_INPUT_CHARS:,}, max_request_bytes 16 MiB)\n")
    print(f"  {'run':8s} {'normal answered':>16s} {'texts/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'peak MB':>8s}")
    for name, row in (("clean", clean), ("mixed", loaded)):
        answered = f"{len(row['latencies'])}/{requests}"  # a failed request stops the bench (openai raises)
        print(f"  {name:8s} {answered:>16s} {requests / row['seconds']:8.1f} "
              f"{np.percentile(row['latencies'], 50) * 1000:7.1f} {p99[name]:7.1f} {row['peak_memory_mb']:8.0f}")
    print("\n  large and hostile requests sent meanwhile (status: count):")
    for kind in dict.fromkeys(k for k, _ in loaded["outcomes"]):
        got = ", ".join(f"{status}: {n}" for (k, status), n in sorted(loaded["outcomes"].items()) if k == kind)
        print(f"    {kind:28s} {got}")
    checks = {f"normal p99 within 2x of the clean run's ({p99['mixed'] / p99['clean']:.2f}x)":
              p99["mixed"] <= 2 * p99["clean"],
              f"replica's peak memory under {MEMORY_BOUND_MB} MB": loaded["peak_memory_mb"] < MEMORY_BOUND_MB}
    for check, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {check}")


if __name__ == "__main__":
    main()
