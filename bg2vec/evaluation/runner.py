"""Evaluate every encoder on every task and write the report (``jobs/evaluate.py``).

All task files are read before any model loads, so a missing file fails in a second, not after an
hour of encoding. Each model is loaded once; a text shared by several tasks (SIB-200's
classification and clustering) is encoded once per model (a retrieval query once more, with the
model's query instruction, when it has one).
"""

from __future__ import annotations

import dataclasses
import gc
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bg2vec.errors import Bg2VecError
from bg2vec.evaluation.config import EvaluateConfig
from bg2vec.evaluation.models import Encode, Encoder, ModelSpec, baselines_of, load_encoder, query_instruction
from bg2vec.evaluation.report import write_report
from bg2vec.evaluation.tasks import load_task
from bg2vec.storage import check_apart, missing_location, redact
from bg2vec.training.output import output_state, publish_dir

RESULTS_NAME = "results.json"  # written last: a report directory that has it is complete


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run the evaluation; returns {"output", "table", "results"}."""
    check_apart(cfg.output, {"model": cfg.model, "data": cfg.data, "data_dir": cfg.data_dir,
                             **{f"models[{i}].path": spec.path for i, spec in enumerate(cfg.models)}})
    if output_state(cfg.output, RESULTS_NAME) != "missing" and not cfg.overwrite:
        raise Bg2VecError(f"output {redact(cfg.output)} already holds files; choose another output= or pass "
                          f"overwrite=true")
    models = [("model", cfg.model)] + [(f"models[{i}].path", s.path) for i, s in enumerate(cfg.models)
                                       if s.kind != "callable"]
    for key, path in models:
        if path is not None and missing_location(path):
            raise Bg2VecError(f"{key}={redact(path)} does not exist; pass a trained bg2vec directory (e.g. "
                              f"runs/demo/simcse), a base LLM's folder or hub id (org/name), or packaged:NAME")
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
    instructions: dict[str, str | None] = {}
    main = {task.spec.name: task.main_score for task in tasks}
    types = {task.spec.name: task.spec.type for task in tasks}
    for spec in specs:
        started = time.perf_counter()
        encoder = _cached(load_encoder(spec, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                       device=cfg.device))
        instructions[spec.name] = encoder.query_instruction
        results[spec.name] = {task.spec.name: task.evaluate(encoder) for task in tasks}
        queries = f", queries with the instruction {encoder.query_instruction!r}" if encoder.query_instruction else ""
        print(f"[evaluate] {spec.name}: {len(tasks)} tasks in {time.perf_counter() - started:.1f} s{queries}",
              flush=True)
        del encoder
        gc.collect()
    if cfg.mteb.enabled:
        _run_mteb(cfg, specs[-1] if cfg.model is None else ModelSpec("model", cfg.model), results, main, types)

    staging = Path(tempfile.mkdtemp(prefix="bg2vec-eval-"))
    try:
        notes = ("Tasks:\n\n" + "".join(f"- {t.spec.name} ({t.spec.type}, {len(t.texts)} texts"
                                          f"{': ' + t.note if t.note else ''})\n" for t in tasks)
                 + "\nMetrics follow MTEB's definitions (bg2vec.evaluation.metrics).")
        if any(task.queries for task in tasks):
            notes += "\n\n" + _instruction_notes(instructions)
        table = write_report(staging, results, main, types, notes)
        publish_dir(staging, cfg.output, last=RESULTS_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"output": cfg.output, "table": table, "results": results}


def _instruction_notes(instructions: dict[str, str | None]) -> str:
    """Which instruction each model put before the retrieval queries."""
    listed = "".join(f"- {name}: {f'`{instruction}`' if instruction else 'none'}\n"
                     for name, instruction in instructions.items())
    return f"Instruction before the retrieval queries (passages and the other tasks' texts get none):\n\n{listed}"


def _cached(encoder: Encoder) -> Encoder:
    """``encoder`` with a per-model memo: each distinct text is encoded once (per role: query or not)."""
    encode = _memo(encoder.encode)
    queries = encode if encoder.encode_queries is encoder.encode else _memo(encoder.encode_queries)
    return dataclasses.replace(encoder, encode=encode, encode_queries=queries)


def _memo(encode: Encode) -> Encode:
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
                                 batch_size=cfg.batch_size,
                                 query_instruction=query_instruction(spec, encoder.config.prompts)).items():
        results.setdefault(spec.name, {})[f"MTEB {task}"] = scores
        main[f"MTEB {task}"] = "main_score"
        types[f"MTEB {task}"] = "mteb"
