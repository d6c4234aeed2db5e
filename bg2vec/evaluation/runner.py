"""Evaluate every encoder on every task and write the report (``jobs/evaluate.py``).

All task files are read before any model loads, so a missing file fails in a second, not after an
hour of encoding. Each model is loaded once; a text shared by several tasks (SIB-200's
classification and clustering) is encoded once per model.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bg2vec.errors import Bg2VecError
from bg2vec.evaluation.config import EvaluateConfig
from bg2vec.evaluation.models import ModelSpec, baselines_of, load_encoder
from bg2vec.evaluation.report import write_report
from bg2vec.evaluation.tasks import load_task
from bg2vec.storage import redact
from bg2vec.training.output import output_state, publish_dir

RESULTS_NAME = "results.json"  # written last: a report directory that has it is complete


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run the evaluation; returns {"output", "table", "results"}."""
    if output_state(cfg.output, RESULTS_NAME) != "missing" and not cfg.overwrite:
        raise Bg2VecError(f"output {redact(cfg.output)} already holds files; choose another output= or pass "
                          f"overwrite=true")
    if not cfg.tasks and not cfg.mteb.enabled:
        raise Bg2VecError("no tasks: list them under `tasks:` (see configs/tiny/evaluate.yaml) or set "
                          "mteb.enabled=true")
    names = [t.name for t in cfg.tasks]
    if len(set(names)) != len(names):
        raise Bg2VecError(f"task names must be unique, got {names}")
    tasks = [load_task(spec, cfg.sources()) for spec in cfg.tasks]
    for task in tasks:
        print(f"[evaluate] task {task.spec.name} ({task.spec.type}): {task.note or f'{len(task.texts)} texts'}",
              flush=True)
    specs = []
    if cfg.model is not None:  # no baselines: the model itself
        specs = baselines_of(cfg.model, cfg.baselines) if cfg.baselines else [ModelSpec("model", cfg.model)]
    specs += cfg.models
    if not specs:
        raise Bg2VecError("nothing to evaluate: set model= (a trained directory or base LLM) or list `models:`")
    if len({s.name for s in specs}) != len(specs):
        raise Bg2VecError(f"model names must be unique, got {[s.name for s in specs]}")

    results: dict[str, dict[str, dict]] = {}
    main = {task.spec.name: task.main_score for task in tasks}
    types = {task.spec.name: task.spec.type for task in tasks}
    for spec in specs:
        started = time.perf_counter()
        encode = _cached(load_encoder(spec, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                      device=cfg.device))
        results[spec.name] = {task.spec.name: task.evaluate(encode) for task in tasks}
        print(f"[evaluate] {spec.name}: {len(tasks)} tasks in {time.perf_counter() - started:.1f} s", flush=True)
        del encode
        gc.collect()
    if cfg.mteb.enabled:
        _run_mteb(cfg, specs[-1] if cfg.model is None else ModelSpec("model", cfg.model), results, main, types)

    staging = Path(tempfile.mkdtemp(prefix="bg2vec-eval-"))
    try:
        notes = ("Tasks:\n\n" + "".join(f"- {t.spec.name} ({t.spec.type}, {len(t.texts)} texts"
                                          f"{': ' + t.note if t.note else ''})\n" for t in tasks)
                 + "\nMetrics follow MTEB's definitions (bg2vec.evaluation.metrics).")
        table = write_report(staging, results, main, types, notes)
        publish_dir(staging, cfg.output, last=RESULTS_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"output": cfg.output, "table": table, "results": results}


def _cached(encode):
    """``encode`` with a per-model memo: each distinct text is encoded once."""
    memo: dict[str, np.ndarray] = {}

    def cached(texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in memo))
        if missing:
            memo.update(zip(missing, encode(missing)))
        return np.stack([memo[t] for t in texts])

    return cached


def _run_mteb(cfg: EvaluateConfig, spec: ModelSpec, results: dict, main: dict, types: dict) -> None:
    from bg2vec.evaluation.mteb_adapter import run_mteb
    from bg2vec.modeling.encoder import Bg2Vec

    encoder = Bg2Vec.from_pretrained(spec.path, max_length=cfg.max_length, device=cfg.device)
    for task, scores in run_mteb(encoder, spec.name, task_names=cfg.mteb.tasks, languages=cfg.mteb.languages,
                                 batch_size=cfg.batch_size).items():
        results.setdefault(spec.name, {})[f"MTEB {task}"] = scores
        main[f"MTEB {task}"] = "main_score"
        types[f"MTEB {task}"] = "mteb"
