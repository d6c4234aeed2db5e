"""Cutting documents into overlapping passages at token boundaries of the encoder's tokenizer."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pyarrow as pa

from bg2vec.storage import WEIGHT_SUFFIXES, localize


def passage_windows(n_tokens: int, passage_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Token windows [start, end) of one document's passages.

    Windows of ``passage_tokens`` advance by ``passage_tokens - overlap_tokens``; the last one ends
    at the last token, so no window lies wholly inside the previous one."""
    stride = passage_tokens - overlap_tokens
    windows = []
    for start in range(0, n_tokens, stride):
        end = min(start + passage_tokens, n_tokens)
        windows.append((start, end))
        if end == n_tokens:
            break
    return windows


@functools.lru_cache(maxsize=2)
def encoder_tokenizer(model: str):
    """The tokenizer of an encoder directory (local, or only its small files fetched from a URI) or hub id."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(localize(model, skip_suffixes=WEIGHT_SUFFIXES))


def split_passages(batch: dict[str, np.ndarray], model: str, text_column: str, id_column: str | None,
                   title_column: str | None, passage_tokens: int, overlap_tokens: int,
                   whole_documents: bool = False) -> pa.Table:
    """``map_batches`` function: document rows (with Ray Data's ``path``) in, one row per passage out
    (``whole_documents``: one per document, its first ``passage_tokens`` tokens)."""
    tokenizer = encoder_tokenizer(model)
    texts = ["" if t is None else str(t) for t in batch[text_column]]
    ids = (batch[id_column] if id_column in batch else
           np.array([hashlib.sha1(t.encode()).hexdigest() for t in texts]))
    offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    doc, index, passages, char_start, char_end, tokens = [], [], [], [], [], []
    for i, (text, doc_offsets) in enumerate(zip(texts, offsets)):
        kept = [(a, b) for a, b in doc_offsets if b > a]  # tokens that cover no text carry nothing
        windows = ([(0, min(len(kept), passage_tokens))] if whole_documents and kept else
                   passage_windows(len(kept), passage_tokens, overlap_tokens))
        for k, (first, last) in enumerate(windows):
            start, end = kept[first][0], kept[last - 1][1]
            if not text[start:end].strip():
                continue  # whitespace only: nothing to retrieve
            doc.append(i)
            index.append(k)
            passages.append(text[start:end])
            char_start.append(start)
            char_end.append(end)
            tokens.append(last - first)
    doc = np.array(doc, dtype=np.int64)
    titles = {"title": pa.array([None if t is None else str(t) for t in batch[title_column][doc]], pa.string())
              } if title_column else {}
    return pa.table({"id": ids[doc], "path": batch["path"][doc], "passage_index": pa.array(index, pa.int32()),
                     **titles, "passage": pa.array(passages, pa.string()),
                     "char_start": pa.array(char_start, pa.int64()), "char_end": pa.array(char_end, pa.int64()),
                     "tokens": pa.array(tokens, pa.int64())})
