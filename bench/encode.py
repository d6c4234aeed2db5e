"""Encoding throughput: Bg2Vec.encode vs sentence-transformers' encode, same model, same run.

    python bench/encode.py               # about 2 minutes on 2 cores

Model: a small random-weight Mistral (4 layers, hidden 256) with the real Mistral-7B-Instruct-v0.3
tokenizer, saved once and loaded by both libraries. Corpus: mixed-length Bulgarian text from
../shared (or $BG2VEC_SHARED): SIB-200 sentences, EXAMS questions and EXAMS Wikipedia paragraphs
(truncated to max_length). Same batch size, mean pooling, float32 on CPU, best of interleaved runs.
Target: Bg2Vec >= 1.0x sentence-transformers.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer, models
from transformers import AutoModel, AutoTokenizer

from bg2vec import Bg2Vec
from bg2vec.modeling.tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BG2VEC_SHARED", REPO.parent / "shared"))
EVAL = SHARED / "data/eval"
BATCH, MAX_LENGTH, REPS = 32, 512, 3


def corpus() -> list[str]:
    texts = []
    for split in ("dev", "test"):
        with open(EVAL / f"sib200_bul/{split}.tsv", encoding="utf-8") as f:
            texts += [row["text"] for row in csv.DictReader(f, delimiter="\t")]
    with open(EVAL / "exams_bg/dev_bg_with_para.jsonl", encoding="utf-8") as f:
        for line in list(f)[:150]:
            question = json.loads(line)["question"]
            texts.append(question["stem"])
            texts += [choice["para"] for choice in question["choices"][:2] if choice.get("para")]
    return texts


def write_small_model(model_dir: str, tokenizer) -> None:
    """The benches' encoder: a random-weight Mistral of 4 layers, hidden 256, with ``tokenizer`` (real
    tokenisation, a forward pass a CPU runs in milliseconds)."""
    torch.manual_seed(0)
    config = tiny_config("mistral", len(tokenizer), hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
    AutoModel.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def main() -> None:
    texts = corpus()
    tokenizer = AutoTokenizer.from_pretrained(SHARED / "data/tokenizers/mistral-7b-instruct-v0.3")
    tokenizer.pad_token = tokenizer.eos_token  # sentence-transformers pads; Mistral has no pad token
    tokenizer.chat_template = None  # sentence-transformers 6 renders it at load and fails on Mistral's
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    with tempfile.TemporaryDirectory() as model_dir:
        write_small_model(model_dir, tokenizer)
        ours = Bg2Vec.from_pretrained(model_dir, pooling="mean", max_length=MAX_LENGTH, device="cpu")
        transformer = models.Transformer(model_dir, max_seq_length=MAX_LENGTH)
        theirs = SentenceTransformer(modules=[transformer, models.Pooling(256, "mean")], device="cpu")
        runs = {"bg2vec": [], "sentence-transformers": []}
        for _ in range(REPS):
            for name, encode in (("bg2vec", lambda: ours.encode(texts, batch_size=BATCH)),
                                 ("sentence-transformers", lambda: theirs.encode(texts, batch_size=BATCH))):
                start = time.perf_counter()
                encode()
                runs[name].append(time.perf_counter() - start)
    best = {name: min(times) for name, times in runs.items()}
    print(f"corpus: {len(texts)} Bulgarian texts, {np.mean(lengths):.0f} tokens on average "
          f"(min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)}; truncated to {MAX_LENGTH}); "
          f"batch {BATCH}; {torch.get_num_threads()} CPU threads; best of {REPS}\n")
    print(f"  {'encoder':22s} {'seconds':>8s} {'sentences/s':>12s} {'vs sentence-transformers':>25s}")
    for name, seconds in best.items():
        print(f"  {name:22s} {seconds:8.2f} {len(texts) / seconds:12.1f} "
              f"{best['sentence-transformers'] / seconds:24.2f}x")


if __name__ == "__main__":
    main()
