"""EXAMS (Hardalov et al., 2020) Bulgarian questions with retrieved Wikipedia paragraphs, as a
question -> evidence retrieval task and as a corpus of real Bulgarian text.

Each question has four answer choices, each with the Wikipedia paragraphs retrieved for it. The
retrieval task: the query is the question followed by its correct answer, the corpus is every
distinct paragraph of the chosen questions, and the relevant document is the paragraph of the
correct choice. Questions are split by a hash of their id (30% "eval", 70% "pretrain"), so a model
pre-trained on the "pretrain" paragraphs never saw an evaluation paragraph (paragraphs shared by
both splits are left out of "pretrain").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bg2vec.errors import Bg2VecError

EVAL_SHARE = 0.3


def question_split(question_id: str) -> str:
    """"eval" or "pretrain", stable across runs and machines."""
    bucket = int(hashlib.sha1(question_id.encode()).hexdigest()[:8], 16) / 16**8
    return "eval" if bucket < EVAL_SHARE else "pretrain"


def exams_questions(path: str | Path) -> list[dict]:
    """Every question of an EXAMS *_with_para.jsonl file: id, stem, answer (the correct choice's text),
    relevant (its paragraph) and paras (every choice's paragraph)."""
    questions = []
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                choices = row["question"]["choices"]
                correct = next(c for c in choices if c["label"] == row["answerKey"])
                questions.append({"id": row["id"], "stem": row["question"]["stem"], "answer": correct["text"],
                                  "relevant": correct["para"], "paras": [c["para"] for c in choices]})
            except (json.JSONDecodeError, KeyError, TypeError, StopIteration) as e:
                raise Bg2VecError(f"{path}:{line} is not an EXAMS question with paragraphs "
                                  f"(id, question.stem, question.choices[].para, answerKey): {e!r}") from None
    if not questions:
        raise Bg2VecError(f"{path} holds no EXAMS questions")
    return questions


def exams_retrieval(path: str | Path, split: str = "eval") -> tuple[list[str], list[str], list[dict[int, int]]]:
    """(queries, corpus, relevant) of the questions in ``split`` ("eval", "pretrain" or "all")."""
    chosen = [q for q in exams_questions(path) if split == "all" or question_split(q["id"]) == split]
    corpus: dict[str, int] = {}
    for q in chosen:
        for para in q["paras"]:
            corpus.setdefault(para, len(corpus))
    queries = [f"{q['stem']} {q['answer']}" for q in chosen]
    relevant = [{corpus[q["relevant"]]: 1} for q in chosen]
    return queries, list(corpus), relevant


def exams_paragraphs(path: str | Path, split: str = "pretrain") -> list[str]:
    """The distinct paragraphs of ``split``'s questions that no question of the other split uses."""
    questions = exams_questions(path)
    other = {p for q in questions if question_split(q["id"]) != split for p in q["paras"]}
    seen: dict[str, None] = {}
    for q in questions:
        if question_split(q["id"]) == split:
            seen.update((p, None) for p in q["paras"] if p not in other)
    return list(seen)
