"""Evaluate an encoder against its baselines on Bulgarian tasks, with MTEB's metric definitions.

    # the embedded default: the tiny pipeline's SimCSE model vs its causal/bidirectional/MNTP baselines
    # on SIB-200 (classification, clustering), EXAMS retrieval and bg2vec's hard triples
    python jobs/evaluate.py --config configs/tiny/evaluate.yaml model=runs/tiny/simcse output=runs/tiny/eval

    # a trained BgGPT encoder, plus a sentence-transformers model in the same report
    python jobs/evaluate.py --config configs/bggpt-7b/evaluate.yaml model=runs/bggpt/simcse output=runs/bggpt/eval

Writes results.json ({model: {task: {metric: value}}}), report.md and report.png into output.
"""

from bg2vec.cli import run_job
from bg2vec.evaluation.config import EvaluateConfig


def main(cfg: EvaluateConfig) -> str:
    from bg2vec.evaluation.runner import evaluate

    done = evaluate(cfg)
    return f"{done['table']}\n\nreport: {done['output']}/report.md, chart: {done['output']}/report.png"


if __name__ == "__main__":
    run_job(EvaluateConfig, main, __doc__)
