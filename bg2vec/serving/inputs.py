"""A request's inputs cut to what the encoder reads, before the whole of a long text is ever tokenised.

``Bg2Vec.encode`` keeps the first ``max_length`` tokens of a text. Tokenising a 1 MB text to keep 512 of
its tokens took the replica seconds and hundreds of MB; here each text is first cut to a prefix of
``CHARS_PER_TOKEN`` characters per kept token, and only a prefix that yields too few tokens (and is not
the whole text) is lengthened, doubling. A cut is kept only when its tokens go ``MARGIN`` past the limit:
a cut changes the tokens near it, not the first ``max_length``, so the encoder embeds what it embeds for
the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass

CHARS_PER_TOKEN = 8
"""Characters per token of the first cut; above the 2-5 of natural text in the encoders' tokenizers."""
MARGIN = 8
"""Tokens a cut must yield past the limit."""


@dataclass(frozen=True)
class FittedInputs:
    texts: list[str]
    """Each input, or the prefix of it that gives the encoder the same first ``limit`` tokens."""
    counts: list[int]
    """Tokens of each text as encode's input (special tokens included): the whole text's when it was not
    cut; more than the limit (a prefix's count) when it was."""
    cut: list[bool]


def fit_inputs(token_counts, texts: list[str], limit: int) -> FittedInputs:
    """``token_counts``: ``Bg2Vec.token_counts`` (tokens of each text as encode's input); ``limit``: the
    encoder's max_length."""
    chars = [limit * CHARS_PER_TOKEN] * len(texts)
    fitted: list[str | None] = [None] * len(texts)
    counts = [0] * len(texts)
    todo = list(range(len(texts)))
    while todo:
        prefixes = [texts[i][:chars[i]] for i in todo]
        for i, prefix, count in zip(todo, prefixes, token_counts(prefixes)):
            if len(prefix) == len(texts[i]) or count >= limit + MARGIN:
                fitted[i], counts[i] = prefix, count
            else:
                chars[i] *= 2
        todo = [i for i in todo if fitted[i] is None]
    return FittedInputs(fitted, counts, [len(f) < len(t) for f, t in zip(fitted, texts)])
