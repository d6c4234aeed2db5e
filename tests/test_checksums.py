"""bg2vec.data.dumps.checksums: the sums files Wikimedia publishes beside dumps, against a local server."""

from __future__ import annotations

import hashlib

import pytest

from bg2vec.data.dumps.checksums import file_digest, published_checksum
from bg2vec.data.dumps.download import fetch
from dump_server import DATA, DUMP, MD5SUMS, NAME, SHA1SUMS
from dump_server import sums_file as _sums

pytestmark = pytest.mark.usefixtures("fast_retries")


def test_md5_is_used_when_only_md5sums_is_published(server, tmp_path):
    server.files[DUMP] = DATA
    server.files[MD5SUMS] = _sums(hashlib.md5, {NAME: DATA})

    assert published_checksum(server.url(DUMP)) == ("md5", hashlib.md5(DATA).hexdigest())
    assert fetch(server.url(DUMP), tmp_path).read_bytes() == DATA


def test_md5_is_used_when_sha1sums_lacks_the_file(server, tmp_path):
    server.files[DUMP] = DATA
    server.files[SHA1SUMS] = _sums(hashlib.sha1, {"bgwiki-20241101-abstract.xml.gz": b"other"})
    server.files[MD5SUMS] = _sums(hashlib.md5, {NAME: DATA})

    assert published_checksum(server.url(DUMP)) == ("md5", hashlib.md5(DATA).hexdigest())


def test_latest_matches_the_dated_entry_for_the_same_file(server, tmp_path):
    latest = "/bgwiki/latest/bgwiki-latest-pages-articles.xml.bz2"
    server.files[latest] = DATA
    server.files["/bgwiki/latest/bgwiki-latest-sha1sums.txt"] = _sums(hashlib.sha1, {
        # Same prefix, different file: a loose prefix match would take this digest.
        "bgwiki-20241101-pages-articles-multistream.xml.bz2": b"multistream",
        "enwiki-20241101-pages-articles.xml.bz2": b"another wiki",
        NAME: DATA,
    })

    assert published_checksum(server.url(latest)) == ("sha1", hashlib.sha1(DATA).hexdigest())
    path = fetch(server.url(latest), tmp_path)
    assert path.name == "bgwiki-latest-pages-articles.xml.bz2"
    assert path.read_bytes() == DATA


def test_published_checksum_is_none_when_nothing_matches(server):
    server.files[SHA1SUMS] = _sums(hashlib.sha1, {"bgwiki-20241101-abstract.xml.gz": b"other"})

    assert published_checksum(server.url(DUMP)) is None  # sums files exist / 404, no entry
    assert published_checksum(server.url("/bgwiki/20241101/README.txt")) is None  # not a dump name
    assert published_checksum(server.url("/bgwiki/20241102/bgwiki-20241102-pages-articles.xml.bz2")) is None


def test_file_digest_streams_known_algorithms(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(DATA * 6)  # larger than one 1 MiB read
    assert file_digest(path, "sha1") == hashlib.sha1(DATA * 6).hexdigest()
    assert file_digest(str(path), "md5") == hashlib.md5(DATA * 6).hexdigest()
