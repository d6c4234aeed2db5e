"""Training pairs from one prepared page: pure functions, deterministic given (seed, page id).

A page is a dict of its pages/ columns: ``id``, ``title``, ``text`` and ``sections`` (None for pages
prepared before sections were kept: only the unstructured kinds are mined from their text).

Kinds and where they come from:

- ``title_lead`` and ``section``: (title -> lead) and (title and heading path -> section text), the
  Wikipedia pairs of E5's CCPairs (Wang et al. 2022, "Text Embeddings by Weakly-Supervised
  Contrastive Pre-training"), where (entity + section title, passage) pairs are a main source;
- ``lead_body``: the lead as a summary-like query for the rest of the article (the same idea at
  article scale);
- ``crops``: two independent random spans of one paragraph, Contriever's "independent cropping"
  (Izacard et al. 2021, "Unsupervised Dense Information Retrieval with Contrastive Learning");
  symmetric, so the pair gets no query instruction;
- ``inverse_cloze``: a sentence as the query, its paragraph with that sentence removed as the
  positive, the inverse cloze task of ORQA (Lee et al. 2019, "Latent Retrieval for Weakly
  Supervised Open Domain Question Answering").

Filters name the reason of every drop: a query or positive too short, or a trivial pair whose
passage-length query is found verbatim in its positive (for crops: either crop inside the other).
Titles and headings are exempt from the last one: an article naturally repeats its title.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from bg2vec.pairs.config import STRUCTURED_KINDS, PairsConfig

# a sentence ends at . ! ? or … followed by space and a capital (Latin or Cyrillic), or at a line break
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])[\"»“”)]?\s+(?=[„\"«(]?[A-Z\u0400-\u042f])|\n")
_WORD = re.compile(r"\S+")
TRIVIAL_CHECKED = frozenset({"lead_body", "crops", "inverse_cloze"})
SYMMETRIC = frozenset({"crops"})
"""Kinds whose query is a passage like its positive: instruction "" (none) instead of the stage's."""


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    kind: str


def rng_for(seed: int, page_id: int, kind: str) -> random.Random:
    """The random choices of one kind on one page (a str seed is hashed with SHA-512: stable anywhere)."""
    return random.Random(f"{seed}:{page_id}:{kind}")


def lead(page: dict) -> str | None:
    sections = page["sections"]
    return sections[0]["text"] if sections and not sections[0]["heading_path"] else None


def paragraphs(page: dict) -> list[str]:
    """The page's paragraphs: its sections' (no heading lines), else its text's."""
    if page["sections"] is None:
        return page["text"].split("\n\n")
    return [p for s in page["sections"] for p in s["text"].split("\n\n")]


def title_lead(page: dict, cfg: PairsConfig, rng: random.Random) -> list[Pair]:
    text = lead(page)
    return [Pair(page["title"], text, "title_lead")] if text else []


def section(page: dict, cfg: PairsConfig, rng: random.Random) -> list[Pair]:
    """The query is the title and the heading path, "Title > Heading > Subheading"."""
    chosen = _sample(rng, [s for s in page["sections"] if s["heading_path"]], cfg.max_pairs_per_page)
    return [Pair(" > ".join([page["title"], *s["heading_path"]]), s["text"], "section") for s in chosen]


def lead_body(page: dict, cfg: PairsConfig, rng: random.Random) -> list[Pair]:
    text = lead(page)
    body = "\n\n".join(s["text"] for s in page["sections"] if s["heading_path"])
    return [Pair(text, body, "lead_body")] if text and body else []


def crops(page: dict, cfg: PairsConfig, rng: random.Random) -> list[Pair]:
    """Per chosen paragraph, two spans of words drawn independently: length uniform in ``crop_words``
    (at most the paragraph's), start uniform; each is the paragraph's text from its first word to its
    last. They may overlap (Contriever's point); identical or nested crops are dropped by the filters."""
    low, high = cfg.crop_words
    candidates = []
    for paragraph in paragraphs(page):
        words = [m.span() for m in _WORD.finditer(paragraph)]
        if len(words) >= low:
            candidates.append((paragraph, words))
    pairs = []
    for paragraph, words in _sample(rng, candidates, cfg.max_pairs_per_page):
        first, second = (_crop(rng, paragraph, words, low, high) for _ in range(2))
        pairs.append(Pair(first, second, "crops"))
    return pairs


def _crop(rng: random.Random, paragraph: str, words: list[tuple[int, int]], low: int, high: int) -> str:
    length = rng.randint(low, min(high, len(words)))
    start = rng.randint(0, len(words) - length)
    return paragraph[words[start][0]:words[start + length - 1][1]]


def sentence_spans(paragraph: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence (or line) of a paragraph; the gaps between them are the breaks."""
    spans, start = [], 0
    for match in _SENTENCE_BREAK.finditer(paragraph):
        end = match.start() + len(match.group().rstrip())  # a closing quote stays with its sentence
        spans.append((start, end))
        start = match.end()
    spans.append((start, len(paragraph)))
    return [(a, b) for a, b in spans if b > a]


def without_sentence(paragraph: str, spans: list[tuple[int, int]], i: int) -> str:
    """The paragraph with sentence ``i`` and the break after it (the last one: before it) cut out;
    the rest of the text is kept as it is."""
    if i + 1 < len(spans):
        return paragraph[:spans[i][0]] + paragraph[spans[i + 1][0]:]
    return paragraph[:spans[i - 1][1]]


def inverse_cloze(page: dict, cfg: PairsConfig, rng: random.Random) -> list[Pair]:
    """Per chosen paragraph of two or more sentences, one sentence of ``min_sentence_words`` or more
    words as the query, the paragraph without it as the positive."""
    candidates = []
    for paragraph in paragraphs(page):
        spans = sentence_spans(paragraph)
        usable = [i for i, (a, b) in enumerate(spans) if len(paragraph[a:b].split()) >= cfg.min_sentence_words]
        if len(spans) >= 2 and usable:
            candidates.append((paragraph, spans, usable))
    pairs = []
    for paragraph, spans, usable in _sample(rng, candidates, cfg.max_pairs_per_page):
        i = rng.choice(usable)
        pairs.append(Pair(paragraph[spans[i][0]:spans[i][1]], without_sentence(paragraph, spans, i), "inverse_cloze"))
    return pairs


MINERS = {"title_lead": title_lead, "section": section, "lead_body": lead_body, "crops": crops,
          "inverse_cloze": inverse_cloze}


def _sample(rng: random.Random, items: list, k: int) -> list:
    """At most ``k`` of ``items``, in page order."""
    if len(items) <= k:
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def clip(text: str, limit: int) -> str:
    """``text`` cut at the last space within ``limit`` characters (at ``limit`` if it has none)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    return text[:cut if cut > 0 else limit].rstrip()


def drop_reason(pair: Pair, cfg: PairsConfig) -> str | None:
    """Why a (clipped) pair is dropped, or None to keep it."""
    if len(pair.query) < max(cfg.min_query_chars, 1):
        return "query_too_short"
    if len(pair.positive) < max(cfg.min_positive_chars, 1):
        return "positive_too_short"
    if pair.kind in TRIVIAL_CHECKED and (pair.query in pair.positive or
                                         (pair.kind in SYMMETRIC and pair.positive in pair.query)):
        return "query_in_positive"
    return None


def instruction(kind: str) -> str | None:
    """The pair's instruction column: "" (none) for symmetric kinds, None (the stage's) otherwise."""
    return "" if kind in SYMMETRIC else None


def mine_page(page: dict, cfg: PairsConfig) -> tuple[list[Pair], Counter]:
    """The kept pairs of every kind in ``cfg.kinds``, and the dropped ones counted by reason. Pages
    without ``sections`` give only the unstructured kinds (crops, inverse_cloze)."""
    kept, dropped = [], Counter()
    for kind in cfg.kinds:
        if page["sections"] is None and kind in STRUCTURED_KINDS:
            continue
        for pair in MINERS[kind](page, cfg, rng_for(cfg.seed, page["id"], kind)):
            pair = Pair(clip(pair.query, cfg.max_query_chars), clip(pair.positive, cfg.max_positive_chars), kind)
            reason = drop_reason(pair, cfg)
            if reason is None:
                kept.append(pair)
            else:
                dropped[reason] += 1
    return kept, dropped
