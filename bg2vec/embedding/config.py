"""Configuration of ``jobs/embed.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bg2vec.errors import ConfigError
from bg2vec.storage import redact


@dataclass
class IndexConfig:
    """Search indexes (faiss) over the vectors, built once every shard is embedded, under OUTPUT/index/."""

    precisions: list[Literal["float32", "int8", "binary"]] = field(default_factory=list)
    """Which vectors to index: float32 (the vectors as they are), int8 and/or binary (sentence-transformers'
    quantize_embeddings: int8 in 256 buckets per dimension between the min and max of the corpus's vectors,
    the ranges saved in index/quantization.json for the queries; binary: one bit per dimension, 1 when > 0).
    The quantized vectors are also written as index/int8.npy and index/binary.npy. Empty: no index."""
    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    """flat: exact search (every query scans every vector); hnsw (a graph) or ivf (inverted lists):
    approximate, faster on large corpora. auto: flat up to 50,000 passages, hnsw up to 5 million, ivf beyond."""
    hnsw_m: int = 32
    """HNSW: neighbours per node (more: better recall, more memory and build time)."""
    ivf_lists: int | None = None
    """IVF: number of inverted lists; empty: 4 x sqrt(passages). At most one per 40 passages; trained on up to
    40 vectors per list."""

    def __post_init__(self) -> None:
        if len(set(self.precisions)) != len(self.precisions):
            raise ConfigError(f"index.precisions lists a precision twice: {self.precisions}")
        if self.hnsw_m < 2:
            raise ConfigError(f"index.hnsw_m must be >= 2, got {self.hnsw_m}")
        if self.ivf_lists is not None and self.ivf_lists < 1:
            raise ConfigError(f"index.ivf_lists must be >= 1, got {self.ivf_lists}")


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
    title_column: str | None = "title"
    """Column holding the documents' titles, copied into every passage row as ``title`` (shown by
    jobs/search.py) when the input has it; empty: no title column."""
    passage_tokens: int = 256
    """Passage length in the encoder's tokens; documents are cut at token boundaries."""
    overlap_tokens: int = 32
    """Tokens a passage shares with the previous one of the same document."""
    whole_documents: bool = False
    """One passage per document, its first passage_tokens tokens (and at most the encoder's max_length,
    as Bg2Vec.encode truncates), instead of passages of passage_tokens covering all of it: what the pairs
    stage's negative mining embeds."""
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
    index: IndexConfig = field(default_factory=IndexConfig)
    """Search indexes over the vectors (index.precisions=[float32,int8,binary], index.kind=...); changing
    them on a finished output rebuilds only the index."""

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
        key = {k: getattr(self, k) for k in ("model", "input", "text_column", "id_column", "title_column",
                                             "passage_tokens", "overlap_tokens", "whole_documents", "instruction",
                                             "normalize", "dtype")}
        return key | {"model": redact(self.model), "input": redact(self.input)}  # saved: never credentials


@dataclass
class SearchConfig:
    """Search an embedded and indexed corpus (jobs/embed.py with index.precisions=...) for one query."""

    index: str
    """The embedding output (OUTPUT of jobs/embed.py, holding vectors/ and index/), or its index/ folder.
    Local path or URI."""
    query: str = ""
    """The query text; on the command line also the arguments that are not key=value."""
    top_k: int = 10
    """Passages to print."""
    precision: Literal["auto", "float32", "int8", "binary"] = "auto"
    """Which of the index's vectors to search; auto: float32 when indexed, else binary, else int8. int8:
    the query is quantized with the corpus's saved ranges; binary: Hamming distance of the sign bits."""
    rescore: Literal["auto", "none", "int8", "binary"] = "auto"
    """int8 and binary searches fetch top_k x rescore_multiplier candidates, then rank them by the float
    query's dot product with their int8 vectors (dequantized) or their bits (as sentence-transformers'
    semantic_search_faiss does); none: keep the quantized ranking. auto: int8 when indexed, else the bits."""
    rescore_multiplier: int = 4
    """Candidates per result fetched for rescoring."""
    ef_search: int = 128
    """HNSW indexes: candidates kept while searching the graph (at least top_k x rescore_multiplier)."""
    nprobe: int = 16
    """IVF indexes: inverted lists visited per query."""
    model: str | None = None
    """The encoder of the query; empty: the one that embedded the corpus (saved in the index's manifest)."""
    instruction: str | None = None
    """Instruction prepended to the query (as Bg2Vec.encode's instruction=). Empty: the encoder's own
    query instruction (prompts["query"] in its bg2vec_config.json, set by the contrastive stage), if
    any; "" (instruction='""' on the command line): none."""
    max_chars: int = 300
    """Characters of each passage printed (the rest is cut at a word boundary, with "...")."""

    def __post_init__(self) -> None:
        if not self.query.strip():
            raise ConfigError("the query is empty: pass the query text as the last argument, e.g. "
                              "python jobs/search.py --config configs/tiny/search.yaml \"столицата на България\"")
        for key in ("top_k", "rescore_multiplier", "ef_search", "nprobe", "max_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
