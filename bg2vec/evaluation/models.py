"""The encoders an evaluation compares: the trained model, its baselines, and other encoders.

Baselines of a trained directory (the LLM2Vec paper's comparison), all from the same base LLM:

- ``causal-last``: causal attention, last-token pooling (how a decoder is usually used as an encoder)
- ``causal-mean``: causal attention, mean pooling
- ``bidirectional``: bidirectional attention, mean pooling, no training
- one entry per training stage, cumulative: ``mntp`` (the MNTP adapter only), ``simcse`` (MNTP + SimCSE),
  ``contrastive`` (... + pairs)

Retrieval queries are encoded with the model's query instruction (passages and the texts of the
symmetric tasks without): a bg2vec directory's ``prompts["query"]`` (set by the contrastive stage), a
sentence-transformers folder's "query" prompt, or ModelSpec.query_instruction. The prompts of a trained
directory belong to its last stage, so the views of earlier stages encode queries as they were trained:
without.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bg2vec.errors import Bg2VecError
from bg2vec.modeling.encoder import CONFIG_NAME

BASE_BASELINES = {"causal-last": (False, "last"), "causal-mean": (False, "mean"), "bidirectional": (True, "mean")}
STAGE_LABELS = {"mntp": "MNTP", "simcse": "SimCSE", "contrastive": "pairs"}
Encode = Callable[[list[str]], np.ndarray]


@dataclass
class ModelSpec:
    """An encoder to evaluate."""

    name: str
    """Its name in the report."""
    path: str
    """A bg2vec directory, a base LLM (hub id, folder or packaged:<name>), a sentence-transformers
    model folder, or for kind callable ``module:function``."""
    kind: Literal["bg2vec", "sentence-transformers", "callable"] = "bg2vec"
    """How to load it. callable: any encoder, e.g. one that transformers cannot load: ``function(**options)``
    returns ``encode(texts: list[str]) -> array [n, d]`` (e.g. bg2vec.evaluation.reference:e5_small)."""
    options: dict[str, Any] = field(default_factory=dict)
    """callable only: keyword arguments of the function."""
    bidirectional: bool | None = None
    """bg2vec only: override the attention direction."""
    pooling: str | None = None
    """bg2vec only: override the pooling (mean, weighted_mean, last, bos)."""
    up_to_stage: str | None = None
    """bg2vec only: apply the training stages up to this one (e.g. mntp)."""
    query_instruction: str | None = None
    """Instruction put before retrieval queries (passages get none); "" for none. Default: the model's
    own (a bg2vec directory's prompts["query"], a sentence-transformers folder's "query" prompt).
    callable: not used (the function encodes every text its own way)."""


@dataclass
class Encoder:
    """A loaded encoder as the tasks call it."""

    encode: Encode
    """Texts as they are: passages, and every text of the symmetric tasks."""
    encode_queries: Encode
    """Retrieval queries: with ``query_instruction`` (the same function as ``encode`` when there is none)."""
    query_instruction: str | None = None
    """The instruction queries get (the report names it); None: none."""


def baselines_of(model: str, wanted: list[str]) -> list[ModelSpec]:
    """The specs of ``wanted`` (names from BASE_BASELINES, stage names, or "all") for ``model``; a trained
    directory's own row (its last stage) is always among them, last unless named earlier."""
    path = Path(model)
    stages, base = [], model
    if (path / CONFIG_NAME).is_file():
        config = json.loads((path / CONFIG_NAME).read_text())
        stages = [s["name"] for s in config["stages"]]
        base = str(path / config["base_model"]) if (path / config["base_model"]).is_dir() else config["base_model"]
    known = [*BASE_BASELINES, *stages]
    chosen = known if "all" in wanted else [*wanted, *[s for s in stages[-1:] if s not in wanted]]
    unknown = [w for w in chosen if w not in known]
    if unknown:
        raise Bg2VecError(f"baselines {unknown} are not available for {model}: choose from {known} or 'all'")
    specs = []
    for name in chosen:
        if name in BASE_BASELINES:
            bidirectional, pooling = BASE_BASELINES[name]
            specs.append(ModelSpec(f"base: {name}", base, bidirectional=bidirectional, pooling=pooling))
        else:
            label = " + ".join(STAGE_LABELS.get(s, s) for s in stages[:stages.index(name) + 1])  # MNTP + SimCSE
            up_to = None if name == stages[-1] else name
            # the directory's prompts are its last stage's: an earlier stage never saw them
            specs.append(ModelSpec(label, model, up_to_stage=up_to, query_instruction=None if up_to is None else ""))
    return specs


def load_encoder(spec: ModelSpec, *, batch_size: int, max_length: int | None, device: str | None) -> Encoder:
    """``spec``'s encoder: ``encode(texts) -> [n, d] float32`` and its query-side ``encode_queries``."""
    if spec.kind == "callable":
        encode = _from_callable(spec)
        return Encoder(encode, encode)
    if spec.kind == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        if not Path(spec.path).is_dir():
            raise Bg2VecError(f"model {spec.name}: {spec.path} is not a sentence-transformers model folder")
        model = SentenceTransformer(spec.path, device=device or "cpu", local_files_only=True)
        if max_length is not None:
            model.max_seq_length = max_length
        instruction = query_instruction(spec, model.prompts)
        return _encoder(lambda texts, prompt: model.encode(texts, prompt=prompt, batch_size=batch_size,
                                                           convert_to_numpy=True), instruction)
    from bg2vec.modeling.encoder import Bg2Vec

    encoder = Bg2Vec.from_pretrained(spec.path, bidirectional=spec.bidirectional, pooling=spec.pooling,
                                     max_length=max_length, device=device, up_to_stage=spec.up_to_stage)
    instruction = query_instruction(spec, encoder.config.prompts)
    return _encoder(lambda texts, prompt: encoder.encode(texts, batch_size=batch_size, instruction=prompt),
                    instruction)


def query_instruction(spec: ModelSpec, prompts: dict[str, str]) -> str | None:
    """The instruction ``spec``'s retrieval queries get: its own setting, else the model's ``prompts``; None: none."""
    instruction = spec.query_instruction if spec.query_instruction is not None else prompts.get("query")
    return instruction or None


def _encoder(encode: Callable[..., np.ndarray], instruction: str | None) -> Encoder:
    """An Encoder from ``encode(texts, prompt)``: queries with ``instruction``, everything else without."""
    plain = functools.partial(encode, prompt=None)
    if instruction is None:
        return Encoder(plain, plain)
    return Encoder(plain, functools.partial(encode, prompt=instruction), instruction)


def _from_callable(spec: ModelSpec) -> Encode:
    module_name, _, function_name = spec.path.partition(":")
    if not module_name or not function_name:
        raise Bg2VecError(f"model {spec.name}: kind callable needs path module:function, got {spec.path!r}")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        raise Bg2VecError(f"model {spec.name}: cannot import {spec.path}: {e}") from None
    encode = function(**spec.options)
    if not callable(encode):
        raise Bg2VecError(f"model {spec.name}: {spec.path}(**options) returned {type(encode).__name__}, "
                          f"not an encode(texts) function")

    def checked(texts: list[str]) -> np.ndarray:
        vectors = np.asarray(encode(list(texts)), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise Bg2VecError(f"model {spec.name}: {spec.path}'s encoder returned shape {vectors.shape} "
                              f"for {len(texts)} texts; expected [n, d]")
        return vectors

    return checked
