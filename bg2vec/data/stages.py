"""The Ray Data stages that run on workers: cleaning pages and tokenising documents.

Kept apart from the driver-side code on purpose: every Ray worker imports the module of the
function it runs, and these import neither transformers nor torch (seconds of CPU per worker).
"""

from __future__ import annotations

import functools
import os

import pyarrow as pa
from tokenizers import Tokenizer

from bg2vec.data.config import CleaningConfig
from bg2vec.data.splits import split_of
from bg2vec.data.text.wikitext import WikitextCleaner
from bg2vec.data.tokens.packing import with_special_tokens

SECTIONS_TYPE = pa.list_(pa.struct([("heading_path", pa.list_(pa.string())), ("text", pa.string())]))
CLEAN_SCHEMA = pa.schema([("id", pa.int64()), ("title", pa.string()), ("text", pa.string()),
                          ("split", pa.string()), ("revision_id", pa.int64()),
                          ("categories", pa.list_(pa.string())), ("sections", SECTIONS_TYPE),
                          ("skip_reason", pa.string()),
                          ("lost_bytes", pa.int64()), ("problem", pa.string())])


def clean_pages(batch: pa.Table, *, cleaning: CleaningConfig, namespaces: dict[int, str],
                validation_fraction: float) -> pa.Table:
    """Ray Data stage: raw pages -> cleaned text, categories, sections, split and skip reason."""
    cleaner = WikitextCleaner(cleaning, namespaces)  # cheap to build: compiled patterns are cached
    texts, categories, sections, splits, reasons = [], [], [], [], []
    for page_id, wikitext, reason in zip(batch["id"].to_pylist(), batch["wikitext"].to_pylist(),
                                         batch["skip_reason"].to_pylist()):
        text, cats, parts = "", [], []
        if reason is None:
            if cleaner.is_redirect(wikitext):
                reason = "redirect"
            else:
                page = cleaner.clean(wikitext)
                reason, cats = page.skip_reason, page.categories
                text, parts = (page.text, page.sections) if reason is None else ("", [])
        texts.append(text)
        categories.append(cats)
        sections.append(parts)
        reasons.append(reason)
        splits.append(split_of(page_id, validation_fraction) if reason is None else None)
    return pa.table({"id": batch["id"], "title": batch["title"], "text": texts, "split": splits,
                     "revision_id": batch["revision_id"], "categories": categories,
                     "sections": sections, "skip_reason": reasons, "lost_bytes": batch["lost_bytes"],
                     "problem": batch["problem"]}, schema=CLEAN_SCHEMA)


class TokenizeDocs:
    """Pages -> token ids per document (BOS/EOS added).

    The tokenizer travels as its JSON definition, so workers on any node build it without network
    access or a shared filesystem.
    """

    def __init__(self, tokenizer_json: str, bos: int | None, eos: int | None, include_title: bool):
        # One CPU per task: parallelism comes from more tasks, not from Rust threads fighting them.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.bos, self.eos, self.include_title = bos, eos, include_title

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch["text"].to_pylist()
        if self.include_title:
            texts = [f"{title}\n\n{text}" for title, text in zip(batch["title"].to_pylist(), texts)]
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        ids = pa.array([e.ids for e in encodings], type=pa.list_(pa.int32()))
        return pa.table({"split": batch["split"], "input_ids": with_special_tokens(ids, self.bos, self.eos)})


@functools.lru_cache(maxsize=2)
def _tokenize_stage(tokenizer_json: str, bos: int | None, eos: int | None, include_title: bool) -> TokenizeDocs:
    return TokenizeDocs(tokenizer_json, bos, eos, include_title)


def tokenize_docs(batch: pa.Table, *, tokenizer_json: str, bos: int | None, eos: int | None,
                  include_title: bool) -> pa.Table:
    """Ray Data stage: :class:`TokenizeDocs` in a task. Each worker process builds the tokenizer once
    and keeps it (tasks, unlike an actor pool, reuse the workers that cleaned, and fuse with the
    read and the write)."""
    return _tokenize_stage(tokenizer_json, bos, eos, include_title)(batch)
