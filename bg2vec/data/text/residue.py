"""Markup residue: leftover wikitext/HTML markup per 1,000 characters of cleaned text.

One fixed definition, used for our cleaner and for WikiExtractor alike (``bench/``) and by the
tests as a quality floor. Each pattern counts one kind of leftover that a reader of the text would
see as markup, not prose.
"""

from __future__ import annotations

import re
from collections import Counter

PATTERNS: dict[str, re.Pattern] = {
    "link_brackets": re.compile(r"\[\[|\]\]"),
    "template_braces": re.compile(r"\{\{|\}\}"),
    "table_markup": re.compile(r"\{\||\|\}|^\s*\|-", re.M),
    "pipe": re.compile(r"\|"),
    "quote_markup": re.compile(r"''+"),
    "html_tag": re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>"),
    "html_entity": re.compile(r"&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);"),
    "magic_word": re.compile(r"__[A-ZА-Я]+__"),
    "heading_markup": re.compile(r"^=+[^=\n]+=+\s*$", re.M),
    "list_markup": re.compile(r"^[*#;:]", re.M),
    "media_params": re.compile(r"\b(?:thumb|thumbnail|мини|миниатюра)\s*\||\b\d+px\b"),
    "namespace_prefix": re.compile(
        r"\b(?:File|Image|Media|Category|Файл|Картинка|Изображение|Медия|Категория):"),
}


def residue_counts(text: str) -> Counter:
    return Counter({name: len(p.findall(text)) for name, p in PATTERNS.items()})


def residue_rate(texts: list[str]) -> tuple[float, Counter]:
    """(leftover markup items per 1,000 characters, counts by kind) over a list of texts."""
    counts: Counter = Counter()
    chars = 0
    for text in texts:
        counts.update(residue_counts(text))
        chars += len(text)
    return (1000.0 * sum(counts.values()) / chars if chars else 0.0), counts
