"""A CPU-scale replication of LLM2Vec's central result on real Bulgarian text.

    python bench/replicate.py                     # about 20-30 minutes on 2 cores
    python bench/replicate.py --workdir runs/replicate --keep

The claim (BehnamGhader et al., 2024, LLM2Vec): a decoder used as an encoder gets better in the
order  causal + mean pooling  <  bidirectional + MNTP  <  bidirectional + MNTP + SimCSE.

1. Corpus: the Bulgarian Wikipedia paragraphs of the EXAMS dev questions (../shared), only those
   of the "pretrain" questions (bg2vec.evaluation.exams: 70% by a hash of the question id; no
   paragraph of an evaluation question is kept), written as a MediaWiki dump and prepared with
   jobs/prepare_data.py (BPE tokenizer trained on it, 128-token blocks).
2. "LLM": a small Mistral-architecture decoder pre-trained causally (next-token prediction) on those
   blocks with a plain PyTorch loop; saved as a model folder.
3. jobs/mntp.py and jobs/simcse.py (Ray Train + DeepSpeed ZeRO-3, 2 CPU workers) from that model.
4. jobs/evaluate.py: the trained encoder against its own baselines on SIB-200 classification and
   clustering, EXAMS retrieval (the held-out "eval" questions) and the hard triples. Settings were
   fixed before looking at these test scores.

Prints the report table and whether the ordering holds (mean over tasks).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bg2vec.evaluation.exams import exams_paragraphs
from bg2vec.modeling.tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, HEADS = 192, 4, 4
PRETRAIN_EPOCHS, PRETRAIN_BATCH, PRETRAIN_LR = 1, 32, 2e-3


def shared_dir() -> Path:
    return Path(os.environ.get("BG2VEC_SHARED", REPO.parent / "shared"))


def write_dump(paragraphs: list[str], path: Path) -> None:
    """Each paragraph as a main-namespace page of a MediaWiki export, for jobs/prepare_data.py."""
    with path.open("w", encoding="utf-8") as f:
        f.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="bg">\n')
        for i, text in enumerate(paragraphs, 1):
            title = text.split("\n", 1)[0][:80]
            f.write(f"<page><title>{html.escape(title)} ({i})</title><ns>0</ns><id>{i}</id><revision><id>{i}</id>"
                    f"<text xml:space=\"preserve\">{html.escape(text)}</text></revision></page>\n")
        f.write("</mediawiki>\n")


def run(script: str, *args: str) -> str:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, f"jobs/{script}.py", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"jobs/{script}.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = [line for line in done.stdout.splitlines() if " finished: " in line]
    print(f"  jobs/{script}.py: {time.perf_counter() - started:.0f} s  {summary[-1] if summary else ''}", flush=True)
    return done.stdout


def pretrain(data: Path, out: Path, seed: int = 0) -> None:
    """Causal next-token pre-training of a small Mistral on the prepared training blocks."""
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    blocks = np.concatenate([np.stack(pq.read_table(f).column("input_ids").to_numpy(zero_copy_only=False))
                             for f in sorted((data / "blocks" / "train").glob("*.parquet"))]).astype(np.int64)
    torch.manual_seed(seed)
    config = tiny_config("mistral", len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS // 2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config).train()
    steps = PRETRAIN_EPOCHS * (len(blocks) // PRETRAIN_BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng, step, started = np.random.default_rng(seed), 0, time.perf_counter()
    for epoch in range(PRETRAIN_EPOCHS):
        order = rng.permutation(len(blocks))
        for start in range(0, len(order) - PRETRAIN_BATCH + 1, PRETRAIN_BATCH):
            ids = torch.from_numpy(blocks[order[start:start + PRETRAIN_BATCH]])
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 100 == 0 or step == steps:
                print(f"  pretrain step {step}/{steps} epoch {epoch} loss {loss.item():.3f}", flush=True)
    print(f"  pretrain: {len(blocks)} blocks x {PRETRAIN_EPOCHS} epochs, {time.perf_counter() - started:.0f} s, "
          f"final loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where to keep everything (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bg2vec-replicate-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        exams = shared_dir() / "data" / "eval" / "exams_bg" / "dev_bg_with_para.jsonl"
        paragraphs = exams_paragraphs(exams, "pretrain")
        print(f"corpus: {len(paragraphs)} paragraphs, {sum(map(len, paragraphs)) / 1e6:.1f} M characters", flush=True)
        write_dump(paragraphs, work / "exams-paragraphs.xml")
        data, base = work / "data", work / "base"
        run("prepare_data", "--config", "configs/tiny/prepare.yaml", f"dump={work / 'exams-paragraphs.xml'}",
            f"output={data}", "overwrite=true", "cleaning.min_text_chars=200")
        pretrain(data, base)
        run("mntp", "--config", "configs/replicate/mntp.yaml", f"data={data}", f"output={work / 'mntp'}",
            f"model.name_or_path={base}", "overwrite=true")
        run("simcse", "--config", "configs/replicate/simcse.yaml", f"data={data}", f"mntp={work / 'mntp'}",
            f"output={work / 'simcse'}", "overwrite=true")
        run("evaluate", "--config", "configs/replicate/evaluate.yaml", f"model={work / 'simcse'}",
            f"output={work / 'eval'}", f"data_dir={shared_dir() / 'data' / 'eval'}", "overwrite=true")
        results = json.loads((work / "eval" / "results.json").read_text())
        print((work / "eval" / "report.md").read_text())
        mains = {"SIB200Classification": "accuracy", "SIB200ClusteringS2S": "v_measure",
                 "EXAMSRetrieval": "ndcg_at_10", "HardTriples": "accuracy"}
        mean = {m: float(np.mean([r[t][k] for t, k in mains.items()])) for m, r in results.items()}
        order = ["base: causal-mean", "MNTP", "MNTP + SimCSE"]
        holds = mean[order[0]] < mean[order[1]] < mean[order[2]]
        print(" < ".join(f"{m} {100 * mean[m]:.2f}" for m in order), "->", "ordering HOLDS" if holds else
              "ordering does NOT hold")
        print(f"total {time.perf_counter() - started:.0f} s; work folder {work}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
