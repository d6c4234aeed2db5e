"""Serving load: the embeddings server (jobs/serve.py's application) under concurrent clients vs in-process
Bg2Vec.encode, same model, same texts, same run.

    python bench/serve_load.py           # about 2 minutes on 2 cores

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
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import torch
from encode import write_small_model  # bench/ is the script's directory, first on sys.path
from transformers import AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.ray_utils import free_port
from bg2vec.serving.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BG2VEC_SHARED", REPO.parent / "shared"))
CLIENTS, REQUESTS, BATCH = 16, 640, 32


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
                              batch_wait_timeout_s=0.02, max_ongoing_requests=2 * CLIENTS, cpus_per_replica=1)
            measured = load(deploy(cfg), texts)
            serve.delete(cfg.name)  # one server at a time
            label = f"server, {CLIENTS} clients, max_batch_size {batch}"
            rows[f"{label} (mean batch {measured['mean_batch']:.1f})"] = measured
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


if __name__ == "__main__":
    main()
