"""Configuration of ``jobs/embed.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bg2vec.errors import ConfigError
from bg2vec.storage import redact


@dataclass
class EmbedConfig:
    """Split a corpus into passages and embed them with a trained encoder, as Parquet vectors."""

    model: str
    """The encoder: a trained bg2vec directory (or a base LLM, hub id or folder)."""
    input: str
    """Parquet or JSONL with a text column: a file, a folder of them, or a prepared data directory
    (its pages/ are used). Local path or URI (s3://, gs://). Each input file is one shard."""
    output: str
    """Output directory: vectors/<shard>.parquet (id, passage_index, passage, char_start, char_end,
    vector) and, written last, manifest.json. Local path or URI."""
    text_column: str = "text"
    """Column holding the documents' text."""
    id_column: str | None = "id"
    """Column identifying a document, copied into every passage row; when the input has no such
    column, the id is the SHA-1 of the document's text (hex, stable across runs)."""
    passage_tokens: int = 256
    """Passage length in the encoder's tokens; documents are cut at token boundaries."""
    overlap_tokens: int = 32
    """Tokens a passage shares with the previous one of the same document."""
    instruction: str | None = None
    """Instruction prepended to every passage (as Bg2Vec.encode's instruction=); empty: none."""
    normalize: bool = True
    """L2-normalise the vectors (cosine similarity = dot product)."""
    batch_size: int = 64
    """Passages per forward pass (per encoder actor)."""
    actors: int | None = None
    """Most encoder actors (each loads the model once); the pool grows up to it as data flows.
    Empty: one per GPU of the cluster, or 1 on a CPU-only cluster."""
    gpus_per_actor: float | None = None
    """GPUs per encoder actor; empty: 1 when the cluster has GPUs, else 0 (CPU)."""
    cpus_per_actor: float = 1
    """CPUs reserved per encoder actor."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Weights and compute: auto is bfloat16 on GPU, float32 on CPU."""
    progress: bool = True
    """Show Ray Data's progress bars (shard completions and throughput are printed either way)."""
    ray_address: str | None = None
    """Ray cluster to join; empty: RAY_ADDRESS (as set by ray job submit), else a local Ray."""
    overwrite: bool = False
    """Discard an existing output (complete or partial) instead of refusing or resuming."""

    def __post_init__(self) -> None:
        if self.passage_tokens < 8:
            raise ConfigError(f"passage_tokens must be >= 8, got {self.passage_tokens}")
        if not 0 <= self.overlap_tokens < self.passage_tokens:
            raise ConfigError(f"overlap_tokens must be in [0, passage_tokens={self.passage_tokens}), "
                              f"got {self.overlap_tokens}")
        if self.batch_size < 1 or self.cpus_per_actor < 0 or (self.actors is not None and self.actors < 1):
            raise ConfigError("batch_size and actors must be >= 1 and cpus_per_actor >= 0")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")

    def content_key(self) -> dict:
        """The settings the vectors depend on: a resumed run must have the same."""
        key = {k: getattr(self, k) for k in ("model", "input", "text_column", "id_column", "passage_tokens",
                                             "overlap_tokens", "instruction", "normalize", "dtype")}
        return key | {"model": redact(self.model), "input": redact(self.input)}  # saved: never credentials
