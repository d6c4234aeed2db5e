"""MTEB's metric definitions on precomputed embeddings, one function per task type.

Each function follows MTEB's evaluator for that task type (mteb 1.12; the v2 code keeps the same
numbers, and tests/test_evaluation_metrics.py checks them against mteb 2's own evaluators), so that a
score here is comparable with a published MTEB score:

- classification: ``AbsTaskClassification`` + ``logRegClassificationEvaluator``
- clustering: ``AbsTaskClusteringFast`` (mteb 2's ``AbsTaskClustering``; the SIB200ClusteringS2S task class)
- bitext mining: ``BitextMiningEvaluator``
- retrieval: ``RetrievalEvaluator`` (pytrec_eval's nDCG/recall semantics, MTEB's own MRR)

Embeddings come in as float arrays [n, d]; cosine similarity is computed on L2-normalised copies.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, v_measure_score

RETRIEVAL_K = (1, 3, 5, 10, 20, 100, 1000)  # MTEB's k_values


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def undersample(labels: Sequence, samples_per_label: int, idxs: np.ndarray | None, seed: int):
    """MTEB's ``_undersample_data``: shuffle the (previous) permutation with a fresh RandomState(seed),
    then keep the first ``samples_per_label`` examples of each label in that order. Returns the kept
    indices and the permutation, which the next experiment shuffles again."""
    idxs = np.arange(len(labels)) if idxs is None else idxs
    np.random.RandomState(seed).shuffle(idxs)
    counts: dict = {}
    kept = []
    for i in idxs:
        if counts.get(labels[i], 0) < samples_per_label:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
            kept.append(int(i))
    return kept, idxs


def classification(embed: Callable[[list[int]], np.ndarray], train_labels: Sequence, test_embeddings: np.ndarray,
                   test_labels: Sequence, *, n_experiments: int = 10, samples_per_label: int = 8,
                   seed: int = 42, max_iter: int = 100) -> dict:
    """Logistic regression on frozen embeddings, MTEB style: ``n_experiments`` times, train on
    ``samples_per_label`` examples per label drawn by :func:`undersample`, score the whole test set.

    ``embed(indices)`` returns the embeddings of those training examples (MTEB embeds only the sampled
    ones; embedding them all once and indexing gives the same numbers). Scores are means over the
    experiments: accuracy (the main score), macro F1, weighted F1.
    """
    scores, idxs = [], None
    for _ in range(n_experiments):
        kept, idxs = undersample(train_labels, samples_per_label, idxs, seed)
        classifier = LogisticRegression(random_state=seed, max_iter=max_iter)
        classifier.fit(embed(kept), [train_labels[i] for i in kept])
        predicted = classifier.predict(test_embeddings)
        scores.append({"accuracy": accuracy_score(test_labels, predicted),
                       "f1": f1_score(test_labels, predicted, average="macro"),
                       "f1_weighted": f1_score(test_labels, predicted, average="weighted")})
    result = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    result["accuracy_per_experiment"] = [s["accuracy"] for s in scores]
    return result


def clustering(embeddings: np.ndarray, labels: Sequence, *, n_repetitions: int = 10,
               max_documents_per_cluster: int = 16_384, batch_size: int = 512, seed: int = 42) -> dict:
    """MTEB's fast clustering, with every document embedded (as SIB200ClusteringS2S sets it up): one
    ``random.Random(seed)`` first draws all the documents in random order (MTEB's sampling of the documents
    to embed), then ``n_repetitions`` times draws ``max_documents_per_cluster`` of them with replacement,
    however few documents there are; MiniBatchKMeans (k = the number of labels among all documents,
    random_state=seed) clusters each draw. The main score is the mean V-measure."""
    rng = random.Random(seed)
    labels = np.asarray(labels)
    # the order matters: MTEB's draws index the documents in the sampled order, after that sample used the rng
    order = rng.sample(range(len(labels)), k=len(labels))
    kmeans = MiniBatchKMeans(n_clusters=np.unique(labels).size, batch_size=batch_size, init="k-means++", n_init=1,
                             random_state=seed)
    values = []
    for _ in range(n_repetitions):
        chosen = rng.choices(order, k=max_documents_per_cluster)
        values.append(v_measure_score(labels[chosen], kmeans.fit_predict(embeddings[chosen])))
    return {"v_measure": float(np.mean(values)), "v_measure_std": float(np.std(values))}


def bitext_mining(source: np.ndarray, target: np.ndarray, gold: Sequence[int] | None = None) -> dict:
    """For each source sentence its cosine nearest neighbour among the targets; ``gold[i]`` is the
    index of source i's translation (default i). Precision/recall/F1 are sklearn's weighted averages
    over the gold labels, as MTEB computes them; F1 is the main score."""
    predicted = (_normalized(source) @ _normalized(target).T).argmax(axis=1)
    gold = np.arange(len(source)) if gold is None else np.asarray(gold)
    return {"accuracy": float(accuracy_score(gold, predicted)),
            "precision": float(precision_score(gold, predicted, average="weighted", zero_division=0)),
            "recall": float(recall_score(gold, predicted, average="weighted", zero_division=0)),
            "f1": float(f1_score(gold, predicted, average="weighted", zero_division=0))}


def retrieval(queries: np.ndarray, corpus: np.ndarray, relevant: Sequence[dict[int, int]],
              k_values: Sequence[int] = RETRIEVAL_K) -> dict:
    """Rank the corpus by cosine similarity for every query; ``relevant[q]`` maps corpus index ->
    relevance grade (> 0) for query q.

    nDCG@k as trec_eval computes it (gain = the grade, discount log2(rank + 1), ideal ordering of the
    judged documents), recall@k = relevant retrieved in the top k / all relevant, MRR@k = 1/rank of
    the first relevant document within the top k (0 when none). Means over queries; nDCG@10 is the
    main score.
    """
    scores = _normalized(queries) @ _normalized(corpus).T
    top = min(max(k_values), corpus.shape[0])
    # stable sort on the negated scores: ties keep corpus order, like MTEB's sorted(...)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return ranking_metrics(ranked, relevant, k_values)


def ranking_metrics(ranked: np.ndarray, relevant: Sequence[dict[int, int]],
                    k_values: Sequence[int] = RETRIEVAL_K) -> dict:
    """:func:`retrieval`'s metrics of rankings made elsewhere (e.g. a search index): ``ranked[q]`` is
    query q's corpus indices, best first (an index < 0: no document)."""
    out: dict[str, float] = {}
    for k in k_values:
        ndcg, recall, mrr = [], [], []
        for q, judged in enumerate(relevant):
            grades = np.array([judged.get(int(d), 0) for d in ranked[q, :k]], dtype=np.float64)
            discounts = 1.0 / np.log2(np.arange(2, grades.size + 2))
            ideal = np.sort(np.array([g for g in judged.values() if g > 0], dtype=np.float64))[::-1][:k]
            ndcg.append(float(grades @ discounts) / float(ideal @ discounts[:ideal.size]) if ideal.size else 0.0)
            n_relevant = sum(1 for g in judged.values() if g > 0)
            recall.append(float((grades > 0).sum()) / n_relevant if n_relevant else 0.0)
            hits = np.flatnonzero(grades > 0)
            mrr.append(1.0 / (hits[0] + 1) if hits.size else 0.0)
        out[f"ndcg_at_{k}"] = float(np.mean(ndcg))
        out[f"recall_at_{k}"] = float(np.mean(recall))
        out[f"mrr_at_{k}"] = float(np.mean(mrr))
    return out


def triples(anchor: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> dict:
    """Hard triples (original, paraphrase, same-prefix contradiction): the mean margin
    cos(anchor, positive) - cos(anchor, negative) and the share of triples where the positive wins."""
    a, p, n = _normalized(anchor), _normalized(positive), _normalized(negative)
    margin = (a * p).sum(axis=1) - (a * n).sum(axis=1)
    return {"margin": float(margin.mean()), "accuracy": float((margin > 0).mean())}
