"""Ray Data source for a MediaWiki dump: one read task per byte range of whole pages."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from bg2vec import storage
from bg2vec.data.dumps.dump_ranges import DumpRange
from bg2vec.data.dumps.dump_reader import iter_pages

BATCH_PAGES = 256
RAW_SCHEMA = pa.schema([("id", pa.int64()), ("title", pa.string()), ("revision_id", pa.int64()),
                        ("wikitext", pa.string()), ("skip_reason", pa.string()),
                        ("lost_bytes", pa.int64()), ("problem", pa.string())])


class WikipediaDumpDatasource(Datasource):
    """Rows: every page of the dump (id, title, revision_id, wikitext), with ``skip_reason`` already
    set for pages that are not articles (namespace, redirect, content_model), and with salvage, one
    ``truncated`` row per range that ended early."""

    def __init__(self, uri: str, codec: str, ranges: list[DumpRange], root_tag: bytes, display: str,
                 salvage: bool):
        self.uri, self.codec, self.ranges = uri, codec, ranges
        self.root_tag, self.display, self.salvage = root_tag, display, salvage

    def get_name(self) -> str:
        return "WikipediaDump"

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # compressed dumps expand 4-6x; unknown before reading

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(functools.partial(_read_range, self.uri, self.codec, r, self.root_tag,
                                           self.display, self.salvage),
                         BlockMetadata(num_rows=None, size_bytes=r.end - r.start, exec_stats=None,
                                       input_files=(self.display,)),
                         schema=RAW_SCHEMA)
                for r in self.ranges]


def _read_range(uri: str, codec: str, r: DumpRange, root_tag: bytes, display: str,
                salvage: bool) -> Iterator[pa.Table]:
    fs, path = storage.resolve(uri)
    rows = []
    for page in iter_pages(fs, path, codec, r.start, r.end, is_first=r.is_first, is_last=r.is_last,
                           root_tag=root_tag, display=display, salvage=salvage):
        rows.append(_row(page))
        if len(rows) == BATCH_PAGES:
            yield pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def _row(page: dict) -> dict:
    if page.get("truncated"):
        return {"id": -1, "title": page["partial_title"], "revision_id": -1, "wikitext": "",
                "skip_reason": "truncated", "lost_bytes": page["lost_bytes"], "problem": page["problem"]}
    reason = ("namespace" if page["ns"] != 0 else "redirect" if page["redirect"]
              else "content_model" if page["model"] != "wikitext" else None)
    return {"id": page["id"], "title": page["title"], "revision_id": page["revision_id"],
            "wikitext": "" if reason else page["wikitext"], "skip_reason": reason, "lost_bytes": 0,
            "problem": None}
