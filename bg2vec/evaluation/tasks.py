"""Evaluation tasks read from local files, and how each is scored.

File formats (UTF-8; ``.tsv`` with a header row, or ``.jsonl`` with one object per line; column
names are configurable):

- classification: ``train`` and ``test`` files with a text and a label column.
- clustering: ``test`` file(s) with a text and a label column (several files are concatenated, as
  MTEB does for SIB200ClusteringS2S: train + dev + test).
- retrieval: ``queries`` (id, text), ``corpus`` (id, text) and ``qrels`` (query-id, corpus-id,
  score) — the BEIR layout — or ``exams`` for an EXAMS ``*_with_para.jsonl`` file (see
  :mod:`bg2vec.evaluation.exams`).
- bitext_mining: ``test`` file with ``source`` and ``target`` columns (row i's translation is row i),
  or ``source`` and ``target`` plain-text files of one sentence per line (Tatoeba's layout).
- triples: ``test`` JSONL with ``anchor``, ``positive``, ``negative`` fields.

Relative paths are read from ``data_dir`` when it is set, else from the download cache, where the
official sets are downloaded on first use (:mod:`bg2vec.evaluation.sources`). A task with a
``corpus:`` section reads no files: it is built from the prepared data directory
(:mod:`bg2vec.evaluation.corpus_tasks`).

A task encodes through an :class:`~bg2vec.evaluation.models.Encoder` (``encode(texts) -> np.ndarray``,
and ``encode_queries`` for a retrieval task's queries), so the same task scores a bg2vec encoder, a
baseline, or any sentence-transformers model.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

import bg2vec
from bg2vec.errors import Bg2VecError
from bg2vec.evaluation import corpus_tasks, metrics
from bg2vec.evaluation.corpus_tasks import CorpusTaskSettings
from bg2vec.evaluation.exams import exams_retrieval
from bg2vec.evaluation.models import Encoder
from bg2vec.evaluation.sources import cached_file, default_cache_dir

PACKAGE_PREFIX = "pkg:"
MAIN_SCORE = {"classification": "accuracy", "clustering": "v_measure", "retrieval": "ndcg_at_10",
              "bitext_mining": "f1", "triples": "accuracy"}


@dataclass
class TaskSpec:
    """One evaluation task: its type and the files it reads."""

    name: str
    """Name in the report (e.g. SIB200Classification)."""
    type: Literal["classification", "clustering", "retrieval", "bitext_mining", "triples"]
    """What is measured, with MTEB's metric definitions (see bg2vec.evaluation.metrics)."""
    files: dict[str, list[str]] = field(default_factory=dict)
    """Role -> files (relative paths: under data_dir, else the download cache): train/test,
    queries/corpus/qrels, exams, source/target."""
    corpus: CorpusTaskSettings | None = None
    """Build the task from the prepared data directory (the evaluate config's ``data``) instead of
    files: retrieval, classification or clustering over its pages (see bg2vec.evaluation.corpus_tasks)."""
    text_column: str = "text"
    """Column holding the text (classification, clustering)."""
    label_column: str = "label"
    """Column holding the label (classification, clustering)."""
    n_experiments: int = 10
    """classification/clustering: repetitions averaged (MTEB: 10)."""
    samples_per_label: int = 8
    """classification: training examples drawn per label in each experiment (MTEB: 8)."""
    max_documents_per_cluster: int = 16_384
    """clustering: documents drawn (with replacement) for each repetition (MTEB: 16,384, however few
    documents the task has); a smaller number clusters a small corpus faster, with a noisier score."""
    exams_split: Literal["eval", "pretrain", "all"] = "eval"
    """retrieval from an EXAMS file: which questions (a stable hash split, see bg2vec.evaluation.exams)."""
    seed: int = 42
    """Seed of the sampling (MTEB: 42)."""


@dataclass
class TaskSources:
    """Where a task's inputs come from."""

    data_dir: str | Path | None = None
    """Local copies of the task files; None: the download cache."""
    cache_dir: str | Path | None = None
    """The download cache; None: ~/.cache/bg2vec/eval (or $BG2VEC_CACHE/eval)."""
    mirror: str | None = None
    """A mirror of the official files' URLs (see bg2vec.evaluation.sources)."""
    corpus: str | None = None
    """The prepared data directory that corpus tasks are built from."""


@dataclass
class Task:
    """A loaded task: the texts it needs and a scorer over their embeddings."""

    spec: TaskSpec
    texts: list[str]
    score: Callable[[np.ndarray], dict]
    """Scores from the embeddings of ``texts`` (in that order)."""
    note: str = ""
    """What the report says about the task (size, chance level, overlap with training text)."""
    queries: int = 0
    """Retrieval: the first ``queries`` texts are queries, encoded with the model's query instruction;
    the others are encoded as they are."""

    @property
    def main_score(self) -> str:
        return MAIN_SCORE[self.spec.type]

    def evaluate(self, encoder: Encoder) -> dict:
        n = self.queries
        if not n:
            return self.score(encoder.encode(self.texts))
        return self.score(np.concatenate([encoder.encode_queries(self.texts[:n]), encoder.encode(self.texts[n:])]))


def task_files(spec: TaskSpec, sources: TaskSources | str | Path) -> dict[str, list[Path]]:
    """Role -> the task's files, each checked to exist or downloaded into the cache (a missing one is
    named with what to do)."""
    sources = sources if isinstance(sources, TaskSources) else TaskSources(data_dir=sources)
    return {role: [_resolve(p, sources, spec.name) for p in paths] for role, paths in spec.files.items()}


def load_task(spec: TaskSpec, sources: TaskSources | str | Path) -> Task:
    """Read a task's files (or build it from the prepared corpus); a missing file or column is named
    with what to do."""
    sources = sources if isinstance(sources, TaskSources) else TaskSources(data_dir=sources)
    if spec.corpus is not None:
        return _from_corpus(spec, sources.corpus)
    files = task_files(spec, sources)
    loader = {"classification": _classification, "clustering": _clustering, "retrieval": _retrieval,
              "bitext_mining": _bitext, "triples": _triples}[spec.type]
    return loader(spec, files)


def _from_corpus(spec: TaskSpec, data: str | None) -> Task:
    if spec.type not in ("retrieval", "classification", "clustering"):
        raise Bg2VecError(f"task {spec.name}: a corpus task is a retrieval, classification or clustering task, "
                          f"not {spec.type}")
    if data is None:
        raise Bg2VecError(f"task {spec.name} is built from a prepared data directory: set data=DIR (the output of "
                          f"jobs/prepare_data.py; jobs/pipeline.py sets it)")
    pages = corpus_tasks.read_pages(data, spec.corpus, spec.name)
    if spec.type == "retrieval":
        built = corpus_tasks.retrieval(pages, spec.corpus, spec.name)
        n = built.queries
        relevant = [{i: 1} for i in range(n)]
        return Task(spec, built.texts, lambda e: metrics.retrieval(e[:n], e[n:], relevant), built.note, queries=n)
    built = corpus_tasks.labelled(pages, spec.corpus, spec.name, split_half=spec.type == "classification")
    labels = built.labels
    if spec.type == "clustering":
        return Task(spec, built.texts, lambda e: metrics.clustering(
            e, labels, n_repetitions=spec.n_experiments, max_documents_per_cluster=spec.max_documents_per_cluster,
            seed=spec.seed), built.note)
    k = built.n_train

    def score(embeddings: np.ndarray) -> dict:
        return metrics.classification(lambda idx: embeddings[idx], labels[:k], embeddings[k:], labels[k:],
                                      n_experiments=spec.n_experiments, samples_per_label=spec.samples_per_label,
                                      seed=spec.seed)

    return Task(spec, built.texts, score, built.note)


def _need(spec: TaskSpec, files: dict, *roles: str) -> list[list[Path]]:
    missing = [r for r in roles if not files.get(r)]
    if missing:
        raise Bg2VecError(f"task {spec.name} ({spec.type}) needs files for {', '.join(missing)} in its `files:` "
                          f"section, e.g. files: {{{missing[0]}: [path.tsv]}}")
    return [files[r] for r in roles]


def _classification(spec: TaskSpec, files: dict) -> Task:
    train_files, test_files = _need(spec, files, "train", "test")
    train = _columns(train_files, (spec.text_column, spec.label_column), spec.name)
    test = _columns(test_files, (spec.text_column, spec.label_column), spec.name)
    n_train = len(train[0])

    def score(embeddings: np.ndarray) -> dict:
        return metrics.classification(lambda idx: embeddings[idx], train[1], embeddings[n_train:], test[1],
                                      n_experiments=spec.n_experiments, samples_per_label=spec.samples_per_label,
                                      seed=spec.seed)

    return Task(spec, train[0] + test[0], score)


def _clustering(spec: TaskSpec, files: dict) -> Task:
    (test_files,) = _need(spec, files, "test")
    texts, labels = _columns(test_files, (spec.text_column, spec.label_column), spec.name)
    return Task(spec, texts, lambda e: metrics.clustering(
        e, labels, n_repetitions=spec.n_experiments, max_documents_per_cluster=spec.max_documents_per_cluster,
        seed=spec.seed))


def _retrieval(spec: TaskSpec, files: dict) -> Task:
    if files.get("exams"):
        queries, corpus, relevant = exams_retrieval(files["exams"][0], spec.exams_split)
    else:
        query_files, corpus_files, qrel_files = _need(spec, files, "queries", "corpus", "qrels")
        query_ids, queries = _columns(query_files, ("id", "text"), spec.name)
        corpus_ids, corpus = _columns(corpus_files, ("id", "text"), spec.name)
        q_index = {q: i for i, q in enumerate(query_ids)}
        d_index = {d: i for i, d in enumerate(corpus_ids)}
        relevant = [{} for _ in queries]
        for q, d, grade in zip(*_columns(qrel_files, ("query-id", "corpus-id", "score"), spec.name)):
            if q not in q_index or d not in d_index:
                raise Bg2VecError(f"task {spec.name}: qrels name query {q!r} / document {d!r}, which the "
                                  f"queries or corpus files do not have")
            relevant[q_index[q]][d_index[d]] = int(grade)
    if not queries or not any(relevant):
        raise Bg2VecError(f"task {spec.name}: no queries with a relevant document")
    n = len(queries)
    return Task(spec, queries + corpus, lambda e: metrics.retrieval(e[:n], e[n:], relevant), queries=n)


def _bitext(spec: TaskSpec, files: dict) -> Task:
    if files.get("source") or files.get("target"):
        source, target = (_lines(paths, spec.name) for paths in _need(spec, files, "source", "target"))
        if len(source) != len(target):
            raise Bg2VecError(f"task {spec.name}: the source files have {len(source)} lines and the target files "
                              f"{len(target)}; line i of one must be the translation of line i of the other")
    else:
        (test_files,) = _need(spec, files, "test")
        source, target = _columns(test_files, ("source", "target"), spec.name)
    n = len(source)
    return Task(spec, source + target, lambda e: metrics.bitext_mining(e[:n], e[n:]))


def _triples(spec: TaskSpec, files: dict) -> Task:
    (test_files,) = _need(spec, files, "test")
    anchor, positive, negative = _columns(test_files, ("anchor", "positive", "negative"), spec.name)
    n = len(anchor)
    return Task(spec, anchor + positive + negative,
                lambda e: metrics.triples(e[:n], e[n:2 * n], e[2 * n:]))


def _resolve(path: str, sources: TaskSources, task: str) -> Path:
    if path.startswith(PACKAGE_PREFIX):  # the evaluation sets that ship with bg2vec
        resolved = Path(bg2vec.__file__).parent / "resources" / path[len(PACKAGE_PREFIX):]
    elif Path(path).is_absolute() or sources.data_dir is not None:
        resolved = Path(path) if Path(path).is_absolute() else Path(sources.data_dir) / path
    else:
        try:
            return cached_file(path, sources.cache_dir or default_cache_dir(), mirror=sources.mirror)
        except Bg2VecError as e:
            raise Bg2VecError(f"task {task}: {e}") from None
    if not resolved.is_file():
        raise Bg2VecError(f"task {task}: file {resolved} does not exist (relative paths are under "
                          f"data_dir={sources.data_dir}; set data_dir= or give absolute paths)")
    return resolved


def _lines(paths: list[Path], task: str) -> list[str]:
    lines = [line for path in paths for line in path.read_text(encoding="utf-8").splitlines()]
    if not lines:
        raise Bg2VecError(f"task {task}: {', '.join(map(str, paths))} hold no lines")
    return lines


def _columns(paths: list[Path], names: tuple[str, ...], task: str) -> tuple[list, ...]:
    """The named columns of one or more TSV/JSONL files, concatenated; texts stay strings."""
    columns: tuple[list, ...] = tuple([] for _ in names)
    for path in paths:
        for line, row in _rows(path):
            for column, name in zip(columns, names):
                if name not in row or row[name] is None:
                    raise Bg2VecError(f"task {task}: {path}:{line} has no {name!r} column/field "
                                      f"(it has {', '.join(map(str, row))})")
                column.append(row[name])
    if not columns[0]:
        raise Bg2VecError(f"task {task}: {', '.join(map(str, paths))} hold no rows")
    return columns


def _rows(path: Path):
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if text.strip():
                    try:
                        yield line, json.loads(text)
                    except json.JSONDecodeError as e:
                        raise Bg2VecError(f"{path}:{line} is not a JSON object: {e}") from None
        return
    if path.suffix not in (".tsv", ".tab"):
        raise Bg2VecError(f"{path}: unknown format; use .tsv (with a header row) or .jsonl")
    with path.open(encoding="utf-8", newline="") as f:
        # QUOTE_NONE: the texts contain quotes; a tab never appears inside a field
        for line, row in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 2):
            yield line, row
