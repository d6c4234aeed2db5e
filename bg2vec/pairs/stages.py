"""The Ray Data stages of the pairs job that run on workers: mining pages, dropping duplicates, writing.

Rows between the stages are pairs (the pairs files' columns, plus their split, a 16-byte hash ``key``
of query and positive, the ``bucket`` that key falls in and a ``rank`` that orders duplicates), or
counts of dropped pairs (``dropped``: the reason, ``count``), which travel with the pairs to the
write tasks, whose returned counts the driver sums into the manifest.

Duplicates across the whole output are dropped by grouping on ``bucket``: every copy of a pair has
the same key, so the same bucket, and one call of :func:`dedup_bucket` sees them all. There are as
many buckets as input files, so each holds about one file's pairs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import Block, BlockAccessor

from bg2vec import storage
from bg2vec.data.sinks import SPLITS, CountingSink, ParquetFile
from bg2vec.pairs.config import PairsConfig
from bg2vec.pairs.mining import instruction, mine_page

PAIRS_SCHEMA = pa.schema([("query", pa.string()), ("positive", pa.string()), ("kind", pa.string()),
                          ("page_id", pa.int64()), ("negatives", pa.list_(pa.string())),
                          ("instruction", pa.string())])
ROW_SCHEMA = pa.schema([*PAIRS_SCHEMA, ("split", pa.string()), ("key", pa.binary(16)), ("bucket", pa.int64()),
                        ("rank", pa.int64()), ("dropped", pa.string()), ("count", pa.int64())])
PAIRS_PER_ROW_GROUP = 4096


def pair_key(query: str, positive: str) -> bytes:
    return hashlib.blake2b(f"{query}\x00{positive}".encode(), digest_size=16).digest()


def pair_rows(columns: dict[str, list], n_buckets: int, dropped: Counter | None = None) -> pa.Table:
    """Rows of pairs (``columns``: the pairs files' columns, ``split`` and ``rank``) followed by one row
    per drop reason in ``dropped``."""
    keys = [pair_key(q, p) for q, p in zip(columns["query"], columns["positive"])]
    n = len(keys)
    rows = {**columns, "key": keys, "bucket": [int.from_bytes(k[:8], "big") % n_buckets for k in keys],
            "dropped": [None] * n, "count": [None] * n}
    table = pa.table(rows, schema=ROW_SCHEMA)
    return pa.concat_tables([table, drop_rows(dropped or Counter())])


def drop_rows(dropped: Counter) -> pa.Table:
    """One row per reason: its count (in bucket 0; they are few), every pair column null."""
    reasons = sorted(dropped)
    columns = {"dropped": reasons, "count": [dropped[r] for r in reasons], "bucket": [0] * len(reasons)}
    return pa.table({name: columns.get(name, [None] * len(reasons)) for name in ROW_SCHEMA.names}, schema=ROW_SCHEMA)


def mine_pages(batch: pa.Table, *, cfg: PairsConfig, n_buckets: int) -> pa.Table:
    """Ray Data stage: pages -> their pairs (:func:`bg2vec.pairs.mining.mine_page`) and the drops counted."""
    sections = batch["sections"].to_pylist() if "sections" in batch.column_names else [None] * batch.num_rows
    columns: dict[str, list] = {name: [] for name in ("query", "positive", "kind", "page_id", "negatives",
                                                      "instruction", "split", "rank")}
    dropped: Counter = Counter()
    for page_id, title, text, split, page_sections in zip(batch["id"].to_pylist(), batch["title"].to_pylist(),
                                                          batch["text"].to_pylist(), batch["split"].to_pylist(),
                                                          sections):
        page = {"id": page_id, "title": title, "text": text, "sections": page_sections}
        pairs, page_dropped = mine_page(page, cfg)
        dropped.update(page_dropped)
        for pair in pairs:
            for name, value in (("query", pair.query), ("positive", pair.positive), ("kind", pair.kind),
                                ("page_id", page_id), ("negatives", []), ("instruction", instruction(pair.kind)),
                                ("split", split), ("rank", page_id)):
                columns[name].append(value)
    return pair_rows(columns, n_buckets, dropped)


def dedup_bucket(group: pa.Table) -> pa.Table:
    """Ray Data ``map_groups`` stage over one bucket: the first copy of each (query, positive) kept, in
    the order (key, kind, rank), so the same copy wins on every run; the others counted as "duplicate"."""
    pairs = group.filter(pc.is_null(group["dropped"])).sort_by([("key", "ascending"), ("kind", "ascending"),
                                                                ("rank", "ascending")])
    keys = np.array(pairs["key"].to_pylist(), dtype=object)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    counts = group.filter(pc.is_valid(group["dropped"]))
    duplicates = Counter({"duplicate": int((~first).sum())} if not first.all() else {})
    return pa.concat_tables([pairs.filter(pa.array(first)), counts, drop_rows(duplicates)])


class PairsDatasink(CountingSink):
    """Writes the pairs to ``pairs/<split>/`` (one file per split per write task); returns the pairs
    counted by split and kind, the drops by reason, and the files written."""

    def __init__(self, pairs_dir: str, run_id: str):
        self.pairs_dir, self.run_id = pairs_dir, run_id

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        name = f"part-{ctx.task_idx:05d}-{self.run_id}.parquet"
        files: dict[str, ParquetFile] = {}
        kept = {split: Counter() for split in SPLITS}
        dropped: Counter = Counter()
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            counts = table.filter(pc.is_valid(table["dropped"]))
            for reason, count in zip(counts["dropped"].to_pylist(), counts["count"].to_pylist()):
                dropped[reason] += count
            for split in SPLITS:
                part = table.filter(pc.and_(pc.is_null(table["dropped"]), pc.equal(table["split"], split)))
                if part.num_rows == 0:
                    continue
                kept[split].update(part["kind"].to_pylist())
                if split not in files:
                    files[split] = ParquetFile(storage.child(self.pairs_dir, split), name, PAIRS_SCHEMA,
                                               PAIRS_PER_ROW_GROUP)
                files[split].write(part.select(PAIRS_SCHEMA.names).cast(PAIRS_SCHEMA))
        for f in files.values():
            f.close()
        return {"kept": kept, "dropped": dropped, "files": {split: [name] for split in files}}
