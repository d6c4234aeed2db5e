"""Reading dumps: formats, siteinfo, parallel byte ranges, bad input and salvage."""

from __future__ import annotations

import bz2
import re

import pyarrow.fs as pafs
import pytest

from bg2vec.data.dumps.dump_ranges import plan_ranges, read_multistream_index
from bg2vec.data.dumps.dump_reader import iter_pages, read_siteinfo, sniff_codec
from bg2vec.data.dumps.multistream import split_pages, write_multistream
from bg2vec.errors import DumpError
from conftest import SAMPLE_DUMP, compress

FS = pafs.LocalFileSystem()


def read_all(path, salvage=False, target_bytes=1 << 30, index=None):
    """Every page of the dump, read range by range as the pipeline's tasks do."""
    path = str(path)
    codec = sniff_codec(FS, path, path)
    info = read_siteinfo(FS, path, codec, path)
    offsets = read_multistream_index(FS, str(index), str(index)) if index else None
    ranges = plan_ranges(FS, path, codec, FS.get_file_info(path).size, target_bytes, offsets, path)
    pages = []
    for r in ranges:
        pages += list(iter_pages(FS, path, codec, r.start, r.end, is_first=r.is_first, is_last=r.is_last,
                                 root_tag=info.root_tag, display=path, salvage=salvage))
    return pages, ranges


def test_siteinfo_of_real_bulgarian_dump(shared_dir):
    path = str(shared_dir / "data/wiki/bgwiki-sample-3pages.xml.bz2")
    info = read_siteinfo(FS, path, sniff_codec(FS, path, path), path)
    assert (info.lang, info.dbname, info.sitename) == ("bg", "bgwiki", "Уикипедия")
    assert (info.namespaces[6], info.namespaces[14], info.namespaces[-2]) == ("Файл", "Категория", "Медия")
    assert info.root_tag.startswith(b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"')


def test_sample_dump_pages():
    pages, ranges = read_all(SAMPLE_DUMP)
    assert len(ranges) == 1 and len(pages) == 47
    sofia = pages[0]
    assert (sofia["id"], sofia["title"], sofia["ns"], sofia["revision_id"] > 0) == (1107, "София", 0, True)
    assert sofia["wikitext"].startswith("{{Селище в България")
    assert sum(p["redirect"] for p in pages) == 3  # the other 2 redirects have no <redirect/> element
    assert sorted({p["ns"] for p in pages}) == [0, 1, 4, 6, 10, 14]


def test_real_english_excerpt(shared_dir):
    pages, _ = read_all(shared_dir / "data/wiki/enwiki-sample-206pages.xml.bz2")
    assert len(pages) == 206
    assert sum(p["redirect"] for p in pages) == 100
    anarchism = next(p for p in pages if p["title"] == "Anarchism")
    assert (anarchism["id"], anarchism["revision_id"]) == (12, 716551092)


@pytest.mark.parametrize("codec", ["bz2", "xz", "gzip"])
def test_compressed_formats_read_the_same_pages(tmp_path, sample_xml, codec):
    path = tmp_path / "dump.xml.anything"  # the codec comes from the magic bytes, not the name
    path.write_bytes(compress(sample_xml, codec))
    assert sniff_codec(FS, str(path), "d") == codec
    pages, _ = read_all(path)
    assert [p["id"] for p in pages] == [p["id"] for p in read_all(SAMPLE_DUMP)[0]]
    assert pages[5]["wikitext"] == read_all(SAMPLE_DUMP)[0][5]["wikitext"]


def test_plain_xml_splits_into_page_aligned_ranges():
    whole, _ = read_all(SAMPLE_DUMP)
    pages, ranges = read_all(SAMPLE_DUMP, target_bytes=20_000)
    assert len(ranges) >= 10
    data = SAMPLE_DUMP.read_bytes()
    assert all(data[r.start:r.start + 6] == b"<page>" for r in ranges[1:])
    assert [r.end for r in ranges[:-1]] == [r.start for r in ranges[1:]] and ranges[-1].end == len(data)
    assert pages == whole


def test_multistream_ranges_read_the_same_pages(tmp_path, sample_xml):
    header, page_xml, footer = split_pages(sample_xml)
    dump, index = tmp_path / "x-multistream.xml.bz2", tmp_path / "x-multistream-index.txt.bz2"
    write_multistream(header, page_xml, footer, dump, index, pages_per_stream=5)
    offsets = read_multistream_index(FS, str(index), "index")
    assert len(offsets) == 10  # 47 pages in streams of 5
    pages, ranges = read_all(dump, target_bytes=1, index=index)  # one stream per range
    assert len(ranges) == 11  # the header stream joins the first
    assert pages == read_all(SAMPLE_DUMP)[0]
    first_line = bz2.decompress(index.read_bytes()).split(b"\n")[0].decode()
    assert first_line == f"{offsets[0]}:1107:София"


def test_index_of_another_dump_is_rejected(tmp_path, sample_xml):
    dump = tmp_path / "d.xml.bz2"
    dump.write_bytes(bz2.compress(sample_xml))
    index = tmp_path / "i.txt.bz2"
    index.write_bytes(bz2.compress(b"600:1107:X\n"))
    with pytest.raises(DumpError, match="does not match dump"):
        read_all(dump, index=index)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"),
    (b"hello, not a dump", "is not XML (it starts with 'hello"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "is an HTML page, not a MediaWiki dump"),
    (b'<?xml version="1.0"?><rss><channel/></rss>', "its root element is <rss>"),
    (bz2.compress(b"  \n<html><head><title>Error</title>"), "is an HTML page"),
])
def test_what_is_not_a_dump_is_named(tmp_path, content, message):
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(content)
    with pytest.raises(DumpError, match=re.escape(message)):
        read_siteinfo(FS, str(path), sniff_codec(FS, str(path), str(path)), str(path))


def test_utf16_dump_gets_a_clear_error(shared_dir):
    path = str(shared_dir / "data/wiki/bgwiki-sample-3pages.utf16.xml.bz2")
    with pytest.raises(DumpError, match="UTF-16/UTF-32.*iconv"):
        read_siteinfo(FS, path, sniff_codec(FS, path, path), path)


def truncated(tmp_path, sample_xml, codec, keep):
    # bz2 decodes whole blocks only: 100 kB blocks (level 1) so that a cut dump keeps a complete one
    data = bz2.compress(sample_xml, 1) if codec == "bz2" else compress(sample_xml, codec)
    path = tmp_path / f"cut.{codec}"
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("codec, problem", [
    ("bz2", "the bz2 data ends early"), ("xz", "the xz data ends early"), ("plain", "the XML is truncated"),
])
def test_truncated_dump_fails_naming_the_last_page(tmp_path, sample_xml, codec, problem):
    path = truncated(tmp_path, sample_xml, codec, keep=0.6)
    with pytest.raises(DumpError) as e:
        read_all(path)
    assert problem in str(e.value) and "salvage=true" in str(e.value)
    assert "after '" in str(e.value)  # names the last complete page


@pytest.mark.parametrize("codec", ["bz2", "xz", "plain"])
def test_salvage_keeps_complete_pages_and_reports_the_loss(tmp_path, sample_xml, codec):
    path = truncated(tmp_path, sample_xml, codec, keep=0.6)
    pages, _ = read_all(path, salvage=True)
    *complete, report = pages
    whole = read_all(SAMPLE_DUMP)[0]
    assert 10 < len(complete) < 47
    assert complete == whole[: len(complete)]  # every complete page, intact
    assert report["truncated"] is True and report["lost_bytes"] > 0
    assert report["partial_title"] in (None, whole[len(complete)]["title"])


def test_truncated_multistream_range_loses_only_its_own_pages(tmp_path, sample_xml):
    header, page_xml, footer = split_pages(sample_xml)
    dump, index = tmp_path / "m.xml.bz2", tmp_path / "m-index.txt.bz2"
    write_multistream(header, page_xml, footer, dump, index, pages_per_stream=5)
    offsets = read_multistream_index(FS, str(index), "i")
    data = bytearray(dump.read_bytes())
    data[offsets[3] + 100: offsets[3] + 120] = b"\0" * 20  # corrupt one stream in the middle
    dump.write_bytes(bytes(data))
    with pytest.raises(DumpError, match="corrupt"):
        read_all(dump, target_bytes=1, index=index)
    pages, _ = read_all(dump, target_bytes=1, index=index, salvage=True)
    kept = [p for p in pages if not p.get("truncated")]
    assert len(kept) == 42 and sum(1 for p in pages if p.get("truncated")) == 1


def test_invalid_utf8_is_named(tmp_path, sample_xml):
    at = sample_xml.index("Софийската".encode())
    path = tmp_path / "bad.xml"
    path.write_bytes(sample_xml[:at] + b"\xff\xfe" + sample_xml[at:])
    with pytest.raises(DumpError, match="invalid UTF-8"):
        read_all(path)
