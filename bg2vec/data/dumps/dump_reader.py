"""Streaming MediaWiki XML export dumps: format sniffing, ``<siteinfo>``, and the pages of a byte range.

A range is either the whole file or a slice that holds whole pages (whole bz2 streams of a
multistream dump, or page-aligned slices of a plain XML file, see :mod:`bg2vec.data.dumps.dump_ranges`).
Slices after the first lack the ``<mediawiki>`` start tag, so the reader feeds the one taken from
the dump's header before them. Nothing is ever read whole into memory.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow.fs as pafs

from bg2vec.errors import DumpError

CHUNK = 1 << 16  # also the granularity of the positions reported for salvaged dumps
_MAGIC = ((b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gzip"))
_ROOT_TAG = re.compile(rb"<mediawiki\b[^>]*>")
_FIRST_TAG = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_DECOMPRESSION_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error)


@dataclass(frozen=True)
class SiteInfo:
    """What the dump says about its wiki."""

    lang: str | None
    dbname: str | None
    sitename: str | None
    generator: str | None
    namespaces: dict[int, str] = field(default_factory=dict)
    root_tag: bytes = b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
    """The ``<mediawiki ...>`` start tag, fed before ranges that start in the middle of the dump."""

    def to_json(self) -> dict:
        return {"lang": self.lang, "dbname": self.dbname, "sitename": self.sitename,
                "generator": self.generator, "namespaces": {str(k): v for k, v in self.namespaces.items()}}


def sniff_codec(fs: pafs.FileSystem, path: str, display: str) -> str:
    """'bz2', 'xz', 'gzip' or 'plain', from the file's magic bytes (extensions lie)."""
    with fs.open_input_file(path) as f:
        head = f.read(8)
    if not head:
        raise DumpError(f"dump {display} is empty (0 bytes); the download probably failed: fetch it again")
    for magic, codec in _MAGIC:
        if head.startswith(magic):
            return codec
    return "plain"


class _RangeReader:
    """A read-only file object over bytes [start, end) of a seekable file."""

    def __init__(self, f: BinaryIO, start: int, end: int):
        self._f, self._pos, self._end = f, start, end
        f.seek(start)

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        n = left if n is None or n < 0 else min(n, left)
        data = self._f.read(n) if n > 0 else b""
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos


def open_decompressed(f: BinaryIO, codec: str, start: int, end: int) -> tuple[BinaryIO, _RangeReader]:
    """(decompressed stream, raw reader) over [start, end) of ``f``; the raw reader's ``tell``
    gives the compressed position for error messages."""
    raw = _RangeReader(f, start, end)
    if codec == "bz2":  # BZ2File reads concatenated streams, so a multistream slice is one stream
        return bz2.BZ2File(raw), raw  # type: ignore[arg-type]
    if codec == "xz":
        return lzma.LZMAFile(raw), raw  # type: ignore[arg-type]
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[arg-type]
    return raw, raw  # type: ignore[return-value]


def read_siteinfo(fs: pafs.FileSystem, path: str, codec: str, display: str) -> SiteInfo:
    """Read the dump's header; reject files that are not MediaWiki XML with a message saying what they are."""
    with fs.open_input_file(path) as f:
        stream, _ = open_decompressed(f, codec, 0, fs.get_file_info(path).size)
        head = b""
        try:
            read = getattr(stream, "read1", stream.read)
            while len(head) < (4 << 20) and b"</siteinfo>" not in head and b"<page>" not in head:
                chunk = read(CHUNK)
                if not chunk:
                    break
                head += chunk
        except _DECOMPRESSION_ERRORS as e:
            raise DumpError(f"dump {display} cannot be decompressed as {codec} ({e}): it is truncated "
                            f"or corrupt before its first complete block; download it again") from None
    _check_is_xml(head, display)
    root = _ROOT_TAG.search(head)
    if root is None:
        tag = _FIRST_TAG.search(head)
        name = tag.group(1).decode("utf-8", "replace") if tag else "?"
        raise DumpError(f"dump {display} is XML but its root element is <{name}>, not <mediawiki>: it "
                        f"is not a MediaWiki XML export (pages-articles) dump")
    end = head.find(b"</siteinfo>")
    if end < 0:  # Special:Export can omit <siteinfo>; namespaces then come from config aliases only
        return SiteInfo(None, None, None, None, {}, root.group(0))
    try:
        doc = ET.fromstring(head[root.start():end + len(b"</siteinfo>")] + b"</mediawiki>")
    except ET.ParseError as e:
        raise DumpError(f"dump {display}: its <siteinfo> header is not well-formed XML ({e})") from None
    ns = _namespace_uri(doc.tag)
    info = doc.find(f"{ns}siteinfo")
    namespaces = {int(n.get("key", "0")): (n.text or "") for n in info.iter(f"{ns}namespace")}
    lang = doc.get("{http://www.w3.org/XML/1998/namespace}lang")
    return SiteInfo(lang, info.findtext(f"{ns}dbname"), info.findtext(f"{ns}sitename"),
                    info.findtext(f"{ns}generator"), namespaces, root.group(0))


def _check_is_xml(head: bytes, display: str) -> None:
    if not head:
        raise DumpError(f"dump {display} holds no data after decompression; fetch it again")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise DumpError(f"dump {display} is encoded as UTF-16/UTF-32 (it starts with a byte-order mark); "
                        f"MediaWiki dumps are UTF-8: convert it first, e.g. "
                        f"`iconv -f UTF-16 -t UTF-8 in.xml > out.xml`, then pass the converted file")
    text = head.removeprefix(codecs.BOM_UTF8).lstrip()
    lowered = text[:200].lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        raise DumpError(f"dump {display} is an HTML page, not a MediaWiki dump (an error or login page "
                        f"saved by a failed download?): check the URL and download it again")
    if not text.startswith(b"<"):
        preview = text[:40].decode("utf-8", "replace")
        raise DumpError(f"dump {display} is not XML (it starts with {preview!r}); expected a MediaWiki "
                        f"XML export, plain or compressed with bz2/xz/gzip")


def _namespace_uri(tag: str) -> str:
    return tag[: tag.index("}") + 1] if tag.startswith("{") else ""


def _page_row(page: ET.Element, ns: str) -> dict:
    revisions = page.findall(f"{ns}revision")
    rev = revisions[-1] if revisions else None  # history dumps: the latest revision
    return {
        "id": int(page.findtext(f"{ns}id") or -1),
        "title": page.findtext(f"{ns}title") or "",
        "ns": int(page.findtext(f"{ns}ns") or 0),
        "revision_id": int(rev.findtext(f"{ns}id") or -1) if rev is not None else -1,
        "redirect": page.find(f"{ns}redirect") is not None,
        "model": (rev.findtext(f"{ns}model") if rev is not None else None) or "wikitext",
        "wikitext": (rev.findtext(f"{ns}text") if rev is not None else None) or "",
    }


def iter_pages(fs: pafs.FileSystem, path: str, codec: str, start: int, end: int, *, is_first: bool,
               is_last: bool, root_tag: bytes, display: str, salvage: bool) -> Iterator[dict]:
    """Yield every ``<page>`` of the range [start, end) as a dict.

    With ``salvage``, a range that ends early (truncated or corrupt) yields its complete pages and
    then one dict ``{"truncated": True, "lost_bytes": n, "partial_title": ...}`` instead of failing;
    ``lost_bytes`` counts the XML read after the last complete page, which had to be discarded.
    """
    parser = ET.XMLPullParser(events=("start", "end"))
    ns, root, root_closed = "", None, False
    last_title, partial_title, partial_started = None, None, False
    fed, last_page_end = 0, 0  # XML bytes fed so far; offset just after the last complete page
    recent = [b"", b""]  # the last two chunks fed, to tell invalid UTF-8 from other XML errors
    all_fed = False
    with fs.open_input_file(path) as f:
        stream, raw = open_decompressed(f, codec, start, end)
        # read1: what is decompressed before a truncation point comes out, not lost with the chunk
        read = getattr(stream, "read1", stream.read)
        if not is_first:
            parser.feed(root_tag)
        try:
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    break
                recent = [recent[1], chunk]
                chunk_start, search_from = fed, 0
                fed += len(chunk)
                parser.feed(chunk)
                for event, el in parser.read_events():
                    if root is None:
                        root, ns = el, _namespace_uri(el.tag)
                        continue
                    tag = el.tag[len(ns):]
                    if event == "start":
                        if tag == "page":
                            partial_started, partial_title = True, None
                        continue
                    if tag == "page":
                        row = _page_row(el, ns)
                        last_title, partial_started = row["title"], False
                        close = chunk.find(b"</page>", search_from)
                        if close >= 0:
                            search_from = close + len(b"</page>")
                        last_page_end = chunk_start + search_from  # chunk_start if the tag straddled
                        root.clear()
                        yield row
                    elif tag == "title" and partial_started:
                        partial_title = el.text
                    elif tag == "siteinfo":
                        root.clear()
                    elif el is root:
                        root_closed = True
            all_fed = True  # from here on, an XML error means the data stopped early
            if not is_last and not root_closed:
                parser.feed(b"</mediawiki>")
            parser.close()
            for event, el in parser.read_events():
                if el is root and event == "end":
                    root_closed = True
            if not root_closed:
                raise ET.ParseError("the XML ends before </mediawiki>")
        except (ET.ParseError, *_DECOMPRESSION_ERRORS) as e:
            problem = _describe_failure(e, recent, codec, all_fed)
            if not salvage:
                last = f"after {last_title!r}" if last_title else "before the first page"
                raise DumpError(
                    f"dump {display}: {problem}, {last} (around byte {raw.tell():,} of the file, in the "
                    f"range starting at byte {start:,}). If the file is truncated, download it again; "
                    f"or pass salvage=true to keep every complete page and report what was lost"
                ) from None
            yield {"truncated": True, "lost_bytes": fed - last_page_end, "problem": problem,
                   "partial_title": partial_title if partial_started else None}


def _describe_failure(e: Exception, recent: list[bytes], codec: str, all_fed: bool) -> str:
    if isinstance(e, ET.ParseError):
        if all_fed:
            return f"the XML is truncated ({e})"
        # a chunk may start inside a multi-byte character: skip its continuation bytes
        data = (recent[0] + recent[1]).lstrip(bytes(range(0x80, 0xC0)))
        try:
            codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
        except UnicodeDecodeError as u:
            return f"invalid UTF-8 ({u.reason}) in the XML"
        return f"the XML is not well-formed ({e})"
    if isinstance(e, EOFError):
        return f"the {codec} data ends early, the file is truncated ({e})"
    return f"the {codec} data is corrupt ({e})"
