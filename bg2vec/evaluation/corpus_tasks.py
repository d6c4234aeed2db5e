"""Evaluation tasks built from a prepared data directory: they need no download, work for any dump
in any language, and measure the encoder on the user's own corpus.

Pages come from ``DIR/pages`` (``split`` chooses the held-out validation pages, the default, or
train, or all), at most ``max_pages`` of them, chosen by a stable hash of the page id. Paragraphs
are the text's blank-line-separated blocks, as the prepare job writes them.

- **retrieval** (main score nDCG@10): the query is a page's lead paragraph (``query: lead``) or its
  title (``query: title``); the corpus is every chosen page's body (its text after the lead
  paragraph), and the relevant document is the page's own body. Pages whose lead is shorter than
  ``min_lead_chars`` or whose body is shorter than ``min_body_chars`` are left out. Chance:
  nDCG@10 of a random ranking, about 1/N·Σ_{r≤10} 1/log2(r+1) for N documents.
- **classification** (accuracy; logistic regression, MTEB's protocol) and **clustering**
  (V-measure; k = number of labels): each page is labelled with its most frequent category among
  the categories that at least ``min_pages`` chosen pages carry (the ``max_labels`` most frequent
  ones; ties by name); pages without one are left out. The text is the page's lead paragraph plus
  what follows, truncated by the encoder's ``max_length``. For classification the pages of each
  label are split in half by the page-id hash: one half trains, the other is scored. Chance: the
  largest label's share of the test pages; for clustering, the V-measure of random clusters of the
  labels' sizes (high when labels have few pages each, as on a small sample).

A task over training pages (``split: train`` or ``all``) measures text the encoder was trained on;
the report says so.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow.parquet as pq

from bg2vec import storage
from bg2vec.errors import Bg2VecError

PAGE_COLUMNS = ["id", "title", "text", "split", "categories"]


@dataclass
class CorpusTaskSettings:
    """A task built from the prepared data directory (the evaluate config's ``data``) instead of files."""

    split: Literal["validation", "train", "all"] = "validation"
    """Which pages: the held-out validation split, the training split, or all (overlaps training text)."""
    query: Literal["lead", "title"] = "lead"
    """retrieval: the query is the page's lead paragraph or its title; the document is its body."""
    max_pages: int = 2000
    """At most this many pages, chosen by a stable hash of the page id."""
    min_lead_chars: int = 40
    """retrieval: pages with a shorter lead paragraph are left out."""
    min_body_chars: int = 200
    """retrieval: pages with a shorter body (text after the lead) are left out."""
    min_pages: int = 5
    """classification/clustering: a category is a label when at least this many chosen pages carry it."""
    max_labels: int = 20
    """classification/clustering: keep the most frequent categories only."""

    def __post_init__(self) -> None:
        if self.max_pages < 2 or self.min_pages < 2 or self.max_labels < 2:
            raise Bg2VecError("corpus task settings: max_pages, min_pages and max_labels must be at least 2")


@dataclass
class CorpusTask:
    """What a corpus task scores: texts plus their roles (see :func:`build`)."""

    texts: list[str]
    labels: list[str] | None = None
    """classification/clustering: one label per text."""
    n_train: int = 0
    """classification: the first n_train texts train, the rest are scored."""
    queries: int = 0
    """retrieval: the first ``queries`` texts are queries, the rest documents; query i's document is i."""
    note: str = ""
    """Size, chance level and overlap with training text, for the report."""


def _bucket(page_id: int) -> float:
    return int(hashlib.sha1(str(page_id).encode()).hexdigest()[:8], 16) / 16**8


def read_pages(data: str, settings: CorpusTaskSettings, task: str) -> list[dict]:
    """The chosen pages of a prepared directory, in a stable order."""
    from bg2vec.data.pipeline import load_manifest

    load_manifest(data)  # a clear error if the directory is not complete
    fs, base = storage.resolve(data)
    try:
        table = pq.read_table(storage.join(base, "pages"), filesystem=fs, columns=PAGE_COLUMNS)
    except (OSError, ValueError) as e:
        raise Bg2VecError(f"task {task}: cannot read the pages of data={storage.redact(data)}: {e}") from None
    pages = [p for p in table.to_pylist() if settings.split == "all" or p["split"] == settings.split]
    pages.sort(key=lambda p: (_bucket(p["id"]), p["id"]))
    return pages[:settings.max_pages]


def _lead_and_body(text: str) -> tuple[str, str]:
    lead, _, body = text.strip().partition("\n\n")
    return lead.strip(), body.strip()


def _overlap(settings: CorpusTaskSettings) -> str:
    return "" if settings.split == "validation" else "; overlaps training text (split: " + settings.split + ")"


def retrieval(pages: list[dict], settings: CorpusTaskSettings, task: str) -> CorpusTask:
    pairs = []
    for page in pages:
        lead, body = _lead_and_body(page["text"])
        if len(lead) >= settings.min_lead_chars and len(body) >= settings.min_body_chars:
            pairs.append((page["title"] if settings.query == "title" else lead, body))
    if len(pairs) < 2:
        raise Bg2VecError(f"task {task}: only {len(pairs)} of {len(pages)} {settings.split} pages have a lead and a "
                          f"body long enough (min_lead_chars={settings.min_lead_chars}, min_body_chars="
                          f"{settings.min_body_chars}); lower those, use split: all, or prepare with a larger "
                          f"validation_fraction")
    n = len(pairs)
    chance = sum(1 / math.log2(r + 1) for r in range(1, min(10, n) + 1)) / n
    return CorpusTask([q for q, _ in pairs] + [d for _, d in pairs], queries=n,
                      note=f"{n} {settings.query} -> body pairs; chance nDCG@10 {chance:.3f}{_overlap(settings)}")


def _chance_v_measure(labels: list[str], repetitions: int = 20) -> float:
    """V-measure of random clusterings with the labels' own cluster sizes: high for few pages per label."""
    from sklearn.metrics import v_measure_score

    rng = np.random.default_rng(0)
    return float(np.mean([v_measure_score(labels, rng.permutation(labels)) for _ in range(repetitions)]))


def labelled(pages: list[dict], settings: CorpusTaskSettings, task: str, *, split_half: bool) -> CorpusTask:
    counts = Counter(c for page in pages for c in dict.fromkeys(page["categories"] or []))
    frequent = sorted((c for c, k in counts.items() if k >= settings.min_pages), key=lambda c: (-counts[c], c))
    labels = frequent[:settings.max_labels]
    rank = {c: i for i, c in enumerate(labels)}
    chosen = []
    for page in pages:
        mine = [c for c in page["categories"] or [] if c in rank]
        if mine:
            chosen.append((page, min(mine, key=rank.__getitem__)))
    used = sorted({label for _, label in chosen})
    if len(used) < 2:
        raise Bg2VecError(f"task {task}: fewer than 2 categories are carried by at least min_pages="
                          f"{settings.min_pages} of the {len(pages)} {settings.split} pages; lower min_pages, use "
                          f"split: all, or prepare more pages")
    texts = [page["text"].strip() for page, _ in chosen]
    names = [label for _, label in chosen]
    if not split_half:
        return CorpusTask(texts, labels=names, note=f"{len(texts)} pages, {len(used)} categories; chance V-measure "
                                                    f"{_chance_v_measure(names):.3f}{_overlap(settings)}")
    train, test = [], []
    for label in used:  # in page order, which is the hash order: every other page of a label trains
        members = [i for i, name in enumerate(names) if name == label]
        train += members[::2]
        test += members[1::2]
    if not test:
        raise Bg2VecError(f"task {task}: no category has two pages, so none is left to score; lower min_pages or "
                          f"use more pages")
    order = train + test
    largest = max(Counter(names[i] for i in test).values()) / len(test)
    return CorpusTask([texts[i] for i in order], labels=[names[i] for i in order], n_train=len(train),
                      note=f"{len(train)} training / {len(test)} test pages, {len(used)} categories; chance "
                           f"accuracy {largest:.3f}{_overlap(settings)}")
