"""Configuration of ``jobs/evaluate.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from bg2vec.evaluation.models import ModelSpec
from bg2vec.evaluation.tasks import TaskSources, TaskSpec


@dataclass
class MTEBSettings:
    """Official MTEB tasks (needs `pip install bg2vec[mteb]` and a machine that can download them)."""

    enabled: bool = False
    """Also run MTEB's own tasks on the main model (not on the baselines)."""
    tasks: list[str] = field(default_factory=list)
    """MTEB task names; empty: every task with a language in `languages`."""
    languages: list[str] = field(default_factory=lambda: ["bul"])
    """ISO 639-3 codes MTEB filters tasks by."""


@dataclass
class EvaluateConfig:
    """Evaluate an encoder and its baselines on Bulgarian tasks; writes results.json, report.md, report.png."""

    output: str
    """Report directory (must not hold a report unless overwrite=true)."""
    model: str | None = None
    """The encoder to evaluate: a trained bg2vec directory or a base LLM; its baselines come with it."""
    baselines: list[str] = field(default_factory=lambda: ["all"])
    """Which baselines of `model`: causal-last, causal-mean, bidirectional, the stage names (mntp,
    simcse, contrastive), or all. A trained directory is always a row itself (its last stage). Empty: the
    model itself only."""
    models: list[ModelSpec] = field(default_factory=list)
    """Other encoders in the same report (e.g. a sentence-transformers folder)."""
    tasks: list[TaskSpec] = field(default_factory=list)
    """The tasks (see bg2vec.evaluation.tasks for the file formats)."""
    data: str | None = None
    """The prepared data directory (jobs/prepare_data.py's output) that tasks with a `corpus:` section
    are built from; jobs/pipeline.py sets it."""
    data_dir: str | None = None
    """A folder holding your own copies of the task files (relative paths are under it). Default: the
    download cache, where the official sets are downloaded on first use. A path starting with pkg:
    is inside the bg2vec package (its own evaluation sets)."""
    cache_dir: str | None = None
    """The download cache of the official sets; default: ~/.cache/bg2vec/eval ($BG2VEC_CACHE/eval when set)."""
    download_mirror: str | None = None
    """A base URL serving the official files under their original paths (replaces scheme and host)."""
    batch_size: int = 32
    """Texts per forward pass."""
    max_length: int | None = None
    """Truncate inputs to this many tokens; default: each model's own setting."""
    device: str | None = None
    """cpu, cuda, cuda:1 ...; default: cuda when available."""
    mteb: MTEBSettings = field(default_factory=MTEBSettings)
    """Official MTEB tasks in the same report (optional)."""
    overwrite: bool = False
    """Replace an existing report at output."""

    def sources(self) -> TaskSources:
        """Where the tasks' inputs come from."""
        return TaskSources(data_dir=self.data_dir, cache_dir=self.cache_dir, mirror=self.download_mirror,
                           corpus=self.data)
