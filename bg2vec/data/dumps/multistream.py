"""Build multistream ``.xml.bz2`` dumps with their index, as Wikimedia publishes them.

Used to recompress a single-stream or plain dump so that Ray reads it in parallel, and by the
tests and benchmarks to make multistream dumps of any size from real pages.
"""

from __future__ import annotations

import bz2
import html
import re
from collections.abc import Iterable
from pathlib import Path

_PAGE_START = b"<page>"
_PAGE_END = b"</page>"
_TITLE = re.compile(rb"<title>(.*?)</title>", re.S)
_ID = re.compile(rb"<id>(\d+)</id>")


def split_pages(xml: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(header up to the first page, the pages with their indentation, footer) of a dump in memory."""
    first = xml.find(_PAGE_START)
    if first < 0:
        raise ValueError("no <page> in this XML")
    header_end = xml.rfind(b"\n", 0, first) + 1
    pages, pos = [], header_end
    while (start := xml.find(_PAGE_START, pos)) >= 0:
        end = xml.index(_PAGE_END, start) + len(_PAGE_END)
        end = xml.index(b"\n", end) + 1 if xml.find(b"\n", end) >= 0 else end
        pages.append(xml[pos:end])
        pos = end
    return xml[:header_end], pages, xml[pos:]


def write_multistream(header: bytes, pages: Iterable[bytes], footer: bytes, dump_path: str | Path,
                      index_path: str | Path, pages_per_stream: int = 100) -> None:
    """Write header, groups of ``pages_per_stream`` pages and footer as separate bz2 streams, and
    the bz2 index of ``offset:page_id:title`` lines."""
    with open(dump_path, "wb") as out, bz2.open(index_path, "wb") as index:
        out.write(bz2.compress(header))
        group: list[bytes] = []

        def flush() -> None:
            offset = out.tell()
            for page in group:
                page_id = _ID.search(page).group(1).decode()
                title = html.unescape(_TITLE.search(page).group(1).decode("utf-8"))
                index.write(f"{offset}:{page_id}:{title}\n".encode())
            out.write(bz2.compress(b"".join(group)))
            group.clear()

        for page in pages:
            group.append(page)
            if len(group) == pages_per_stream:
                flush()
        if group:
            flush()
        out.write(bz2.compress(footer))
