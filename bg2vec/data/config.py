"""Configuration of the data preparation stage (``jobs/prepare_data.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bg2vec.errors import ConfigError


@dataclass
class CleaningConfig:
    """How wikitext becomes plain text, and which pages are kept."""

    min_text_chars: int = 200
    """Pages whose cleaned text is shorter than this are skipped as "too_short" (stubs, link lists)."""
    max_page_chars: int = 4_000_000
    """Pages with more wikitext than this are skipped as "too_large" without parsing."""
    max_page_seconds: float = 10.0
    """Cleaning budget per page; a page over it is skipped as "timeout". Checked between paragraphs,
    whose parsing is bounded by their size, so no page can stall a worker."""
    drop_sections: list[str] = field(default_factory=lambda: [
        "Източници", "Бележки", "Външни препратки", "Литература", "Вижте също", "Библиография",
        "Допълнителна литература", "Външни връзки", "References", "Notes", "External links",
        "See also", "Further reading", "Bibliography", "Sources", "Footnotes", "Citations",
    ])
    """Level-2 sections (matched case-insensitively) dropped whole: references, links, see also."""
    disambiguation_templates: list[str] = field(default_factory=lambda: [
        "Пояснителна страница", "Пояснение", "Многозначност", "Disambig", "Disambiguation", "Dab",
        "Disamb", "Hndis", "Geodis", "Set index article",
    ])
    """Templates that mark a disambiguation page (case-insensitive); such pages are skipped."""
    redirect_keywords: list[str] = field(default_factory=lambda: ["#REDIRECT", "#ПРЕНАСОЧВАНЕ", "#ВИЖ"])
    """Redirect magic words (any case); pages starting with one are skipped even without <redirect/>."""
    file_namespaces: list[str] = field(default_factory=lambda: [
        "Файл", "Картинка", "Изображение", "Медия", "File", "Image", "Media",
    ])
    """Link prefixes of embedded media, in addition to the dump's own File/Media namespace names."""
    category_namespaces: list[str] = field(default_factory=lambda: ["Категория", "Category"])
    """Link prefixes of categories, in addition to the dump's own Category namespace name."""
    keep_template_text: dict[str, int] = field(default_factory=lambda: {
        "lang": 2, "lang-*": 1, "nowrap": 1, "nobr": 1,
    })
    """Templates that wrap prose, and the position (1-based) of the parameter whose text is kept;
    a trailing * matches a name prefix. Every other template is removed."""

    def __post_init__(self) -> None:
        if self.max_page_seconds <= 0 or self.max_page_chars <= 0 or self.min_text_chars < 0:
            raise ConfigError("cleaning.max_page_seconds and cleaning.max_page_chars must be > 0, "
                              "cleaning.min_text_chars >= 0")


@dataclass
class TokenizerConfig:
    """Which tokenizer turns the pages into token blocks."""

    name_or_path: str | None = None
    """Hugging Face tokenizer: a hub id (e.g. INSAIT-Institute/BgGPT-7B-Instruct-v0.2) or a local
    folder. Empty: train a new byte-level BPE on the prepared training pages (see train_vocab_size)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of name_or_path."""
    trust_remote_code: bool = False
    """Allow tokenizer code from the hub to run; off unless you trust the repository."""
    train_vocab_size: int = 8000
    """Vocabulary size of the tokenizer trained when name_or_path is empty (saved in DIR/tokenizer)."""
    add_bos: bool = True
    """Start every document with the tokenizer's BOS token (when it has one)."""
    add_eos: bool = True
    """End every document with the tokenizer's EOS token (when it has one), so packed blocks show
    where one article ends and the next begins."""
    include_title: bool = True
    """Tokenise "title\\n\\ntext" instead of the text alone."""

    def __post_init__(self) -> None:
        if self.train_vocab_size < 300:
            raise ConfigError("tokenizer.train_vocab_size must be at least 300 (256 bytes + specials)")


@dataclass
class PrepareConfig:
    """Wikipedia dump -> clean pages (Parquet) -> packed token blocks (Parquet) + manifest.json."""

    dump: str
    """The dump: a local path (.xml, .xml.bz2 incl. multistream, .xml.xz, .xml.gz), an http(s) URL
    of dumps.wikimedia.org (downloaded with resume and checked against the published checksums), or
    a cloud URI (s3://, gs://). Relative paths are looked up in the current directory, then inside
    the installed bg2vec package (where the presets' sample dump lives)."""
    output: str
    """Output directory, local or a cloud URI; complete once DIR/manifest.json exists."""
    multistream_index: str | None = None
    """The -multistream-index.txt.bz2 of a multistream dump, for parallel reading; looked for next
    to the dump when empty."""
    overwrite: bool = False
    """Replace an existing prepared directory instead of stopping with an error."""
    salvage: bool = False
    """Keep every complete page of a truncated or corrupt dump and report what was lost, instead of
    failing."""
    download_dir: str = "~/.cache/bg2vec/dumps"
    """Where URL dumps are downloaded (and resumed from after an interruption)."""
    verify_download: bool = True
    """Check downloads against the sha1/md5 sums published next to them; refuse if none exist."""
    validation_fraction: float = 0.05
    """Share of pages in the validation split, chosen by a stable hash of the page id."""
    seq_len: int = 512
    """Tokens per packed block."""
    range_mb: float = 32.0
    """Target size (MB of the dump file) of one parallel read task. With two ranges per CPU or more,
    each pass runs fused, one task per range (faster; README, Speed)."""
    max_workers: int | None = None
    """Most cleaning and tokenising tasks running at once (the passes are then never fused); empty:
    all CPUs of the cluster."""
    ray_address: str | None = None
    """Ray cluster to join (e.g. auto); empty: RAY_ADDRESS if set, else a new local Ray."""
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        if not self.dump:
            raise ConfigError("dump is empty: give dump=PATH_OR_URL")
        if not self.output:
            raise ConfigError("output is empty: give output=DIR")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.seq_len < 8:
            raise ConfigError(f"seq_len must be at least 8, got {self.seq_len}")
        if self.range_mb <= 0:
            raise ConfigError(f"range_mb must be > 0, got {self.range_mb}")
        if self.max_workers is not None and self.max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, got {self.max_workers}")
