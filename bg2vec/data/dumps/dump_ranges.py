"""Split a dump into byte ranges of whole pages, so that Ray reads them in parallel.

* multistream ``.xml.bz2`` with its ``-multistream-index.txt.bz2``: ranges of whole bz2 streams
  (each stream holds 100 pages; the index lists the byte offset of every stream);
* plain ``.xml``: page-aligned slices (each slice starts at a ``<page>`` tag; ``<`` inside text is
  always escaped as ``&lt;``, so the tag cannot occur inside page text);
* anything else (single-stream bz2, xz, gzip): one range, since it can only be read from the start.
"""

from __future__ import annotations

import bz2
from dataclasses import dataclass

import pyarrow.fs as pafs

from bg2vec.errors import DumpError

_PAGE = b"<page>"


@dataclass(frozen=True)
class DumpRange:
    index: int
    start: int
    end: int
    is_last: bool

    @property
    def is_first(self) -> bool:
        return self.start == 0


def plan_ranges(fs: pafs.FileSystem, path: str, codec: str, size: int, target_bytes: int,
                index_offsets: list[int] | None = None, display: str = "") -> list[DumpRange]:
    """Byte ranges of about ``target_bytes`` (compressed) that each hold whole pages."""
    if codec == "bz2" and index_offsets:
        bounds = _group(_check_stream_offsets(fs, path, size, index_offsets, display), target_bytes)
    elif codec == "plain":
        bounds = _page_aligned(fs, path, size, target_bytes)
    else:
        bounds = [0]
    ends = bounds[1:] + [size]
    return [DumpRange(i, s, e, i == len(bounds) - 1) for i, (s, e) in enumerate(zip(bounds, ends))]


def read_multistream_index(fs: pafs.FileSystem, path: str, display: str) -> list[int]:
    """Sorted distinct stream offsets from a ``offset:page_id:title`` index (bz2 or plain)."""
    offsets = set()
    with fs.open_input_file(path) as f:
        stream = bz2.BZ2File(f) if f.read(3) == b"BZh" else f
        f.seek(0)
        try:
            for lineno, line in enumerate(_lines(stream), 1):
                head = line.split(b":", 1)[0]
                if not head.strip():
                    continue
                if not head.isdigit():
                    raise DumpError(f"multistream index {display}, line {lineno}: expected "
                                    f"'offset:page_id:title', got {line[:80]!r}")
                offsets.add(int(head))
        except (EOFError, OSError) as e:
            raise DumpError(f"multistream index {display} is truncated or corrupt ({e}); download it "
                            f"again, or leave multistream_index empty to read the dump as one stream") from None
    if not offsets:
        raise DumpError(f"multistream index {display} lists no streams")
    return sorted(offsets)


def _lines(stream, chunk: int = 1 << 20):
    """Lines of a binary stream (pyarrow files cannot iterate lines themselves)."""
    rest = b""
    while block := stream.read(chunk):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _check_stream_offsets(fs: pafs.FileSystem, path: str, size: int, offsets: list[int],
                          display: str) -> list[int]:
    """Stream starts (with 0, the header stream), after checking that the index fits the dump."""
    if offsets[-1] >= size:
        raise DumpError(f"multistream index does not match dump {display}: it lists a stream at byte "
                        f"{offsets[-1]:,} but the file has {size:,} bytes")
    with fs.open_input_file(path) as f:
        for off in {offsets[0], offsets[len(offsets) // 2], offsets[-1]}:
            f.seek(off)
            if f.read(3) != b"BZh":
                raise DumpError(f"multistream index does not match dump {display}: no bz2 stream starts "
                                f"at byte {off:,}; give the index of this very dump (same date)")
    return [0] + [o for o in offsets if o > 0]


def _group(starts: list[int], target_bytes: int) -> list[int]:
    """Merge consecutive streams into ranges of at least ``target_bytes``."""
    bounds = [starts[0]]
    for s in starts[1:]:
        if s - bounds[-1] >= target_bytes:
            bounds.append(s)
    return bounds


def _page_aligned(fs: pafs.FileSystem, path: str, size: int, target_bytes: int) -> list[int]:
    bounds = [0]
    with fs.open_input_file(path) as f:
        guess = target_bytes
        while guess < size:
            start = _next_page_start(f, guess, size)
            if start >= size:
                break
            if start > bounds[-1]:
                bounds.append(start)
            guess = start + target_bytes
    return bounds


def _next_page_start(f, pos: int, size: int, window: int = 1 << 20) -> int:
    f.seek(pos)
    carry = b""
    while pos < size:
        block = f.read(window)
        if not block:
            break
        hit = (carry + block).find(_PAGE)
        if hit >= 0:
            return pos - len(carry) + hit
        carry = block[-(len(_PAGE) - 1):]
        pos += len(block)
    return size
