"""Tasks built from a prepared data directory: which pages, which texts, which labels, and scores."""

from __future__ import annotations

import numpy as np
import pytest

from bg2vec.errors import Bg2VecError
from bg2vec.evaluation.corpus_tasks import CorpusTaskSettings
from bg2vec.evaluation.tasks import TaskSources, TaskSpec, load_task
from conftest import write_prepared_pages

LEAD = "Страница {i} е статия за нещо определено, с достатъчно дълъг първи абзац."
BODY = ("Тялото на страница {i}. " * 12).strip()


def page(i: int, split: str, categories: list[str], lead: str = LEAD, body: str = BODY) -> dict:
    return {"id": i, "title": f"Заглавие {i}", "text": f"{lead.format(i=i)}\n\n{body.format(i=i)}\n\nКрай.",
            "split": split, "revision_id": 1, "categories": categories}


@pytest.fixture
def prepared(tmp_path):
    pages = ([page(i, "validation", ["Реки", "Дълги реки"] if i < 4 else ["Планини"]) for i in range(8)]
             + [page(10, "validation", ["Самотна"]), page(11, "validation", [], lead="Кратко.")]
             + [page(i, "train", ["Реки"]) for i in range(20, 26)])
    return write_prepared_pages(tmp_path, pages)


def corpus_task(prepared, task_type, **settings):
    spec = TaskSpec(name="T", type=task_type, corpus=CorpusTaskSettings(**settings), samples_per_label=2)
    return load_task(spec, TaskSources(corpus=str(prepared)))


def test_retrieval_pairs_each_lead_with_its_own_body(prepared):
    task = corpus_task(prepared, "retrieval", min_pages=2)
    n = len(task.texts) // 2
    assert n == 9  # the 10 validation pages but the one with a short lead; no training page
    leads, bodies = task.texts[:n], task.texts[n:]
    for lead, body in zip(leads, bodies):
        i = lead.split()[1]
        assert lead == LEAD.format(i=i) and body == f"{BODY.format(i=i)}\n\nКрай."
    assert "9 lead -> body pairs; chance nDCG@10" in task.note and "overlaps" not in task.note
    # an encoder that maps each page's lead and body to the same vector ranks every body first
    vectors = np.eye(n, dtype=np.float32)
    assert task.score(np.concatenate([vectors, vectors]))["ndcg_at_10"] == pytest.approx(1.0)
    shuffled = task.score(np.concatenate([vectors, np.roll(vectors, 1, axis=0)]))["ndcg_at_10"]
    assert shuffled < 0.5
    titles = corpus_task(prepared, "retrieval", query="title", split="all")
    assert titles.texts[0].startswith("Заглавие") and len(titles.texts) == 2 * 15 and "overlaps training" in titles.note


def test_labels_are_the_frequent_categories_and_classification_splits_each_in_half(prepared):
    clusters = corpus_task(prepared, "clustering", min_pages=3)
    # "Реки" and "Дълги реки" both have 4 pages: the tie goes by name; "Самотна" has one page
    assert "8 pages, 2 categories; chance V-measure" in clusters.note
    classes = corpus_task(prepared, "classification", min_pages=3)
    assert "4 training / 4 test pages, 2 categories; chance accuracy 0.500" in classes.note
    rivers = tuple(f"Страница {i} " for i in range(4))
    embeddings = np.array([[1.0, 0.0] if t.startswith(rivers) else [0.0, 1.0] for t in classes.texts], np.float32)
    assert classes.score(embeddings)["accuracy"] == pytest.approx(1.0)
    with pytest.raises(Bg2VecError, match=r"task T: fewer than 2 categories are carried by at least min_pages=5"):
        corpus_task(prepared, "clustering", min_pages=5)


def test_a_corpus_task_needs_a_complete_prepared_directory(prepared, tmp_path):
    spec = TaskSpec(name="T", type="retrieval", corpus=CorpusTaskSettings())
    with pytest.raises(Bg2VecError, match=r"task T is built from a prepared data directory: set data=DIR"):
        load_task(spec, TaskSources())
    (prepared / "manifest.json").unlink()
    with pytest.raises(Bg2VecError, match=r"is not a prepared data directory \(no manifest.json\)"):
        load_task(spec, TaskSources(corpus=str(prepared)))
    with pytest.raises(Bg2VecError, match="a corpus task is a retrieval, classification or clustering task"):
        load_task(TaskSpec(name="T", type="triples", corpus=CorpusTaskSettings()), TaskSources(corpus=str(prepared)))
