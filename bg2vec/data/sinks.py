"""Ray Data sinks that write the prepared directory's Parquet files and return what they counted.

Each write task writes one file per output (staged under a temporary name locally, published by
rename) and returns its counts, which the driver sums into the manifest: skip reasons for pages,
tokens/blocks/dropped tokens for blocks. Packing happens here because a write task sees a whole
shard: the remainder of one batch is carried into the next, and only the shard's last partial
block is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from bg2vec import storage
from bg2vec.data.tokens.packing import BlockPacker, blocks_to_arrow

SPLITS = ("train", "validation")
PAGE_COLUMNS = ("id", "title", "text", "split", "revision_id", "categories", "sections")
PAGES_MIN_ROWS_PER_FILE = 1_000
DOCS_MIN_ROWS_PER_SHARD = 1_000
PAGES_PER_ROW_GROUP = 1024
BLOCKS_PER_ROW_GROUP = 1024


class ParquetFile:
    """A Parquet file that appears under its final name only once closed; row groups of at least
    ``group_rows`` rows however small the batches written to it."""

    def __init__(self, uri_dir: str, name: str, schema: pa.Schema, group_rows: int):
        self.fs, base = storage.resolve(uri_dir)
        self.fs.create_dir(base, recursive=True)
        self.path = storage.join(base, name)
        self.staged = storage.temporary_sibling(self.fs, self.path)
        self.writer = pq.ParquetWriter(self.staged, schema, filesystem=self.fs, compression="zstd")
        self.group_rows, self.pending, self.pending_rows = group_rows, [], 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending))
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self.writer.close()
        storage.publish(self.fs, self.staged, self.path)


class CountingSink(Datasink):
    """Keeps the write tasks' returned counts on the driver, where Ray calls on_write_complete."""

    results: list = []

    def on_write_complete(self, write_result) -> None:
        self.results = list(write_result.write_returns)


class PagesDatasink(CountingSink):
    """Writes kept pages to ``pages/``; counts every page by skip reason.

    ``min_rows``: the fewest pages per file; None writes what each upstream task made, which lets Ray
    Data fuse the write into that task.
    """

    def __init__(self, pages_dir: str, run_id: str, min_rows: int | None = PAGES_MIN_ROWS_PER_FILE):
        self.pages_dir, self.run_id, self.min_rows = pages_dir, run_id, min_rows

    @property
    def min_rows_per_write(self) -> int | None:
        return self.min_rows

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        out, stats = None, {"kept": Counter(), "skipped": Counter(), "chars": 0, "truncations": [],
                            "files": []}
        name = f"part-{ctx.task_idx:05d}-{self.run_id}.parquet"
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            reasons = table["skip_reason"]
            truncated = table.filter(pc.equal(reasons, "truncated"))
            stats["truncations"] += truncated.select(["lost_bytes", "problem", "title"]).to_pylist()
            stats["skipped"].update(r for r in reasons.to_pylist() if r and r != "truncated")
            kept = table.filter(pc.is_null(reasons)).select(list(PAGE_COLUMNS))
            if kept.num_rows == 0:
                continue
            stats["kept"].update(kept["split"].to_pylist())
            stats["chars"] += pc.sum(pc.utf8_length(kept["text"])).as_py()
            if out is None:
                out = ParquetFile(self.pages_dir, name, kept.schema, PAGES_PER_ROW_GROUP)
                stats["files"].append(name)
            out.write(kept)
        if out is not None:
            out.close()
        return stats


class BlocksDatasink(CountingSink):
    """Packs tokenised documents into ``blocks/<split>/`` files of ``seq_len``-token rows.

    ``min_rows``: the fewest documents per shard (each shard drops its last partial block per
    split); None packs what each upstream task made, which lets Ray Data fuse the write into it.
    """

    def __init__(self, blocks_dir: str, run_id: str, seq_len: int, min_rows: int | None = DOCS_MIN_ROWS_PER_SHARD):
        self.blocks_dir, self.run_id, self.seq_len, self.min_rows = blocks_dir, run_id, seq_len, min_rows

    @property
    def min_rows_per_write(self) -> int | None:
        return self.min_rows

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        packers = {split: BlockPacker(self.seq_len) for split in SPLITS}
        files: dict[str, ParquetFile] = {}
        docs: Counter = Counter()
        name = f"part-{ctx.task_idx:05d}-{self.run_id}.parquet"
        schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            for split in SPLITS:
                part = table.filter(pc.equal(table["split"], split))
                if part.num_rows == 0:
                    continue
                docs[split] += part.num_rows
                tokens = part["input_ids"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
                full = packers[split].add(tokens)
                if len(full):
                    if split not in files:
                        files[split] = ParquetFile(storage.child(self.blocks_dir, split), name, schema,
                                                    BLOCKS_PER_ROW_GROUP)
                    files[split].write(pa.table({"input_ids": blocks_to_arrow(full)}, schema=schema))
        for f in files.values():
            f.close()
        return {split: {"docs": docs[split], "tokens": p.tokens_in, "blocks": p.blocks_out,
                        "dropped_tokens": p.dropped, "files": [name] if split in files else []}
                for split, p in packers.items()}
