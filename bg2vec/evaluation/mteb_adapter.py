"""Run official MTEB tasks (mteb >= 2, optional: ``pip install bg2vec[mteb]``) with a bg2vec encoder.

MTEB downloads its datasets from the Hugging Face Hub, so this needs a machine that is online; the
offline suite in :mod:`bg2vec.evaluation.tasks` uses the same metric definitions on local files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bg2vec.errors import Bg2VecError


class MTEBEncoder:
    """A :class:`~bg2vec.Bg2Vec` (or anything with ``encode(texts)``) as an MTEB ``EncoderProtocol``."""

    def __init__(self, encoder, name: str, revision: str | None = None, batch_size: int = 32,
                 query_instruction: str | None = None):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.encoder, self.batch_size, self.query_instruction = encoder, batch_size, query_instruction
        # MTEB names models "organization/model"; results are filed under that name and revision
        name = name if "/" in name else f"bg2vec/{name}"
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": name, "revision": revision or "local", "embed_dim": getattr(encoder, "dimension", None),
            "similarity_fn_name": ScoringFunction.COSINE, "framework": ["PyTorch"]})

    def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None,
               **kwargs) -> np.ndarray:
        # MTEB 2 passes a DataLoader of {"text": [...]} batches; Bg2Vec.encode reads those directly
        if self.query_instruction and getattr(prompt_type, "value", prompt_type) == "query":  # MTEB's PromptType
            return self.encoder.encode(inputs, batch_size=self.batch_size, instruction=self.query_instruction)
        return self.encoder.encode(inputs, batch_size=self.batch_size)

    def similarity(self, a, b) -> np.ndarray:
        a, b = _normalized(a), _normalized(b)
        return a @ b.T

    def similarity_pairwise(self, a, b) -> np.ndarray:
        return (_normalized(a) * _normalized(b)).sum(axis=1)


def _normalized(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def run_mteb(encoder, name: str, *, tasks: list | None = None, task_names: list[str] | None = None,
             languages: list[str] | None = None, cache_dir: str | Path | None = None,
             batch_size: int = 32, query_instruction: str | None = None) -> dict[str, dict]:
    """{task name: {"main_score": ..., **scores of the first split and subset}} for MTEB tasks: the given
    task objects, or those named / in ``languages`` (e.g. ["bul"]) from MTEB's registry. Queries (MTEB's
    prompt_type query) are encoded with ``query_instruction`` when given."""
    try:
        import mteb
    except ImportError:
        raise Bg2VecError("the official MTEB tasks need the mteb package: pip install 'bg2vec[mteb]'") from None
    if tasks is None:
        tasks = mteb.get_tasks(tasks=task_names or None, languages=languages or ["bul"])
    cache = mteb.ResultCache(cache_dir) if cache_dir is not None else None
    result = mteb.evaluate(MTEBEncoder(encoder, name, batch_size=batch_size, query_instruction=query_instruction),
                           tasks, cache=cache,
                           overwrite_strategy="always", show_progress_bar=False)
    scores = {}
    for task_result in result.task_results:
        split = next(iter(task_result.scores.values()))
        scores[task_result.task_name] = {k: float(v) for k, v in split[0].items()
                                          if isinstance(v, (int, float, np.floating)) and np.isfinite(v)}
    return scores
