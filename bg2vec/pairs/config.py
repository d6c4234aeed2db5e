"""Configuration of the pairs stage (``jobs/pairs.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bg2vec.errors import ConfigError
from bg2vec.pairs.negatives import NegativesSettings

MINED_KINDS = ("title_lead", "section", "lead_body", "crops", "inverse_cloze")
STRUCTURED_KINDS = ("title_lead", "section", "lead_body")
"""The kinds that need the pages' ``sections`` (prepared directories from before it have only text)."""


@dataclass
class PairsConfig:
    """(query, positive) pairs mined from a prepared corpus and/or read from the user's files."""

    output: str
    """Where the pairs directory goes (pairs/{train,validation}/*.parquet, manifest.json written last)."""
    data: str | None = None
    """A prepared data directory (jobs/prepare_data.py output) to mine pairs from; empty: only files."""
    files: list[str] = field(default_factory=list)
    """The user's own pairs: JSON Lines (.jsonl) or Parquet files with query, positive and optional
    negatives (a list of strings) and instruction."""
    overwrite: bool = False
    """Replace an existing complete pairs directory at output."""
    kinds: list[str] = field(default_factory=lambda: list(MINED_KINDS))
    """Kinds mined from the corpus: title_lead (title -> lead), section (title and headings -> the
    section's text), lead_body (lead -> rest of the article), crops (two random spans of a paragraph),
    inverse_cloze (a sentence -> its paragraph without it)."""
    min_query_chars: int = 3
    """Mined pairs with a shorter query are dropped (query_too_short)."""
    max_query_chars: int = 512
    """Longer mined queries are cut at the last space before this many characters."""
    min_positive_chars: int = 100
    """Mined pairs with a shorter positive are dropped (positive_too_short)."""
    max_positive_chars: int = 2000
    """Longer mined positives are cut at the last space before this many characters."""
    crop_words: list[int] = field(default_factory=lambda: [20, 60])
    """crops: each crop's length in words is drawn uniformly from [min, max] (at most the paragraph's)."""
    min_sentence_words: int = 5
    """inverse_cloze: the shortest sentence used as a query, in words."""
    max_pairs_per_page: int = 4
    """At most this many pairs of each kind from one page (sections, paragraphs drawn at random)."""
    seed: int = 42
    """With the page id, decides every random choice: the same pages give the same pairs on every run."""
    validation_fraction: float = 0.1
    """User pairs: the share that goes to validation/, by a stable hash of the query (mined pairs follow
    their page's split)."""
    model: str | None = None
    """An encoder (a trained bg2vec directory) that mines hard negatives for every pair; empty: none."""
    negatives: NegativesSettings = field(default_factory=NegativesSettings)
    ray_address: str | None = None
    """Ray cluster to join (e.g. auto); empty: RAY_ADDRESS if set (ray job submit), else a new local Ray."""

    def __post_init__(self) -> None:
        if not self.output:
            raise ConfigError("output is required: give output=DIR")
        if not self.data and not self.files:
            raise ConfigError("give data=DIR (a prepared directory to mine) and/or files=[...] (your own pairs)")
        unknown = [k for k in self.kinds if k not in MINED_KINDS]
        if unknown:
            raise ConfigError(f"kinds: unknown {unknown}; choose from {list(MINED_KINDS)}")
        unknown = [k for k in self.negatives.kinds if k not in (*MINED_KINDS, "user")]
        if unknown:
            raise ConfigError(f"negatives.kinds: unknown {unknown}; choose from {[*MINED_KINDS, 'user']}")
        if len(self.crop_words) != 2 or not 1 <= self.crop_words[0] <= self.crop_words[1]:
            raise ConfigError(f"crop_words must be [min, max] with 1 <= min <= max, got {self.crop_words}")
        if not 0 <= self.min_query_chars <= self.max_query_chars or \
                not 0 <= self.min_positive_chars <= self.max_positive_chars:
            raise ConfigError("0 <= min_query_chars <= max_query_chars and 0 <= min_positive_chars <= "
                              "max_positive_chars are required")
        if self.max_pairs_per_page < 1 or self.min_sentence_words < 1:
            raise ConfigError("max_pairs_per_page and min_sentence_words must be >= 1")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
