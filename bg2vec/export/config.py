"""Configuration of ``jobs/export.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bg2vec.errors import ConfigError


@dataclass
class ExportConfig:
    """Merge a trained encoder into one model and write it as a sentence-transformers folder."""

    model: str
    """The trained bg2vec directory (jobs/simcse.py's or jobs/mntp.py's output)."""
    output: str
    """The folder to write: merged safetensors weights, config (bidirectional through is_causal),
    tokenizer, sentence-transformers modules, README.md (the model card). Local path."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The weights' dtype in the folder (bfloat16 halves a 7B model's 28 GB)."""
    query_prompt: str | None = None
    """Instruction sentence-transformers prepends to queries (``encode_query`` / prompt_name="query").
    Pooling leaves the prompt's tokens out, as Bg2Vec.encode's instruction= does. Empty: the encoder's
    own query instruction (prompts["query"] in its bg2vec_config.json, set by the contrastive stage), if
    any; "" (query_prompt='""' on the command line): none. A value given here wins."""
    document_prompt: str | None = None
    """Instruction prepended to documents (``encode_document``); empty: none."""
    results: str | None = None
    """An evaluation's results.json (jobs/evaluate.py) for the card's table and model-index; empty: the
    pipeline's evaluation when the model is one of its stages (DIR/eval/results.json for model=DIR/contrastive,
    DIR/simcse or DIR/mntp, as jobs/pipeline.py writes them) and it is there, else the card has no evaluation."""
    results_name: str | None = None
    """The row of results.json that is this encoder; empty: the one named after its stages
    (e.g. "MNTP + SimCSE")."""
    name: str | None = None
    """The model's name in the card; empty: the output folder's name (or push_to_hub's repo)."""
    license: str | None = None
    """The card's license (a Hugging Face license id: apache-2.0, gemma, ...); empty: the base model's
    when bg2vec knows it (packaged models), else "other"."""
    language: list[str] = field(default_factory=lambda: ["bg"])
    """Languages in the card (ISO 639-1)."""
    push_to_hub: str | None = None
    """A Hugging Face Hub repo id (user/name) to upload the folder to after writing it; the token
    comes from HF_TOKEN or `hf auth login`."""
    private: bool = True
    """Create the Hub repo as private (only with push_to_hub)."""
    overwrite: bool = False
    """Replace an existing output folder."""

    def __post_init__(self) -> None:
        if self.document_prompt == "":
            self.document_prompt = None
        if self.push_to_hub is not None and self.push_to_hub.count("/") != 1:
            raise ConfigError(f"push_to_hub must be a repo id like user/name, got {self.push_to_hub!r}")
