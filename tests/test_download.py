"""bg2vec.data.download against a real local HTTP server (Range, HEAD, injected faults)."""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bg2vec.data import download
from bg2vec.data.download import fetch, file_digest, published_checksum
from bg2vec.errors import DownloadError

DATA = random.Random(0).randbytes(200_000)
DUMP_DIR = "/bgwiki/20241101"
DUMP = f"{DUMP_DIR}/bgwiki-20241101-pages-articles.xml.bz2"
SHA1SUMS = f"{DUMP_DIR}/bgwiki-20241101-sha1sums.txt"
MD5SUMS = f"{DUMP_DIR}/bgwiki-20241101-md5sums.txt"
NAME = "bgwiki-20241101-pages-articles.xml.bz2"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    user_agent: str | None


class DumpServer:
    """In-memory files served over HTTP, with switches for the faults a real mirror produces."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[Seen] = []
        self.ignore_range = False
        self.base = ""
        self._lock = threading.Lock()
        self._faults: dict[tuple[str, str], list] = {}  # (kind, path) -> [value, times left]

    def url(self, path: str) -> str:
        return self.base + path

    def drop_after(self, path: str, nbytes: int, times: int) -> None:
        """Close the connection after nbytes of the body on the next `times` requests for path."""
        self._faults["drop", path] = [nbytes, times]

    def fail(self, path: str, status: int, times: int) -> None:
        self._faults["status", path] = [status, times]

    def stall(self, path: str, seconds: float, times: int) -> None:
        self._faults["stall", path] = [seconds, times]

    def seen(self, path: str, method: str = "GET") -> list[Seen]:
        with self._lock:
            return [s for s in self.log if s.path == path and s.method == method]

    def _record(self, seen: Seen) -> dict[str, object]:
        with self._lock:
            self.log.append(seen)
            active = {}
            for kind in ("drop", "status", "stall"):
                fault = self._faults.get((kind, seen.path))
                if fault and fault[1] > 0:
                    fault[1] -= 1
                    active[kind] = fault[0]
            return active


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, so a drop is a plain close

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        dump: DumpServer = self.server.dump
        path = urllib.parse.urlsplit(self.path).path
        fault = dump._record(Seen(self.command, path, self.headers.get("Range"), self.headers.get("User-Agent")))
        if "stall" in fault:
            time.sleep(fault["stall"])
        if "status" in fault:
            self.send_error(fault["status"])
            return
        data = dump.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start, end, status = 0, len(data) - 1, 200
        requested = self.headers.get("Range")
        if requested and not dump.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", requested)
            start = int(m[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end, status = min(int(m[2]) if m[2] else end, end), 206
        body = data[start:end + 1]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "none" if dump.ignore_range else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if send_body:
            self.wfile.write(body[:fault["drop"]] if "drop" in fault else body)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF_BASE", 0.001)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    dump = DumpServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.dump = dump
    dump.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield dump
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def dump_server(server):
    """The dated dump with its sha1sums (which also lists another file, as Wikimedia's do)."""
    server.files[DUMP] = DATA
    server.files[SHA1SUMS] = _sums(hashlib.sha1, {NAME: DATA, "bgwiki-20241101-abstract.xml.gz": b"other"})
    return server


def _sums(hash_factory, files: dict[str, bytes]) -> bytes:
    return "".join(f"{hash_factory(data).hexdigest()}  {name}\n" for name, data in files.items()).encode()


def _listing(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


# --- plain downloads and checksums ---------------------------------------------------------------


def test_download_is_byte_identical_and_sha1_verified(dump_server, tmp_path):
    # A wrong md5 proves sha1 is preferred: were md5 used, this download would fail.
    dump_server.files[MD5SUMS] = f"{'0' * 32}  {NAME}\n".encode()
    calls = []
    path = fetch(dump_server.url(DUMP), tmp_path / "dumps", progress=lambda done, total: calls.append((done, total)))

    assert path == tmp_path / "dumps" / NAME
    assert path.read_bytes() == DATA
    assert _listing(tmp_path / "dumps") == [NAME]
    assert len(dump_server.seen(SHA1SUMS)) == 1
    assert dump_server.seen(MD5SUMS) == []
    [request] = dump_server.seen(DUMP)
    assert request.range is None
    assert "bg2vec" in request.user_agent
    assert calls[-1] == (len(DATA), len(DATA))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


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


def test_progress_is_rate_limited(dump_server, tmp_path):
    calls = []
    fetch(dump_server.url(DUMP), tmp_path, chunk_size=100, progress=lambda *a: calls.append(a))
    # 2,000 chunks in well under a second: a handful of calls, ending with the total.
    assert 1 <= len(calls) <= 5
    assert calls[-1] == (len(DATA), len(DATA))


# --- resuming and retrying -----------------------------------------------------------------------


def test_resume_sends_range_from_the_part_size(dump_server, tmp_path):
    half = len(DATA) // 2
    (tmp_path / f"{NAME}.part").write_bytes(DATA[:half])

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == [f"bytes={half}-"]
    assert path.read_bytes() == DATA
    assert _listing(tmp_path) == [NAME]


def test_dropped_connections_resume_where_they_stopped(dump_server, tmp_path):
    dump_server.drop_after(DUMP, 30_000, times=2)

    path = fetch(dump_server.url(DUMP), tmp_path, chunk_size=4096)

    assert [s.range for s in dump_server.seen(DUMP)] == [None, "bytes=30000-", "bytes=60000-"]
    assert path.read_bytes() == DATA


def test_progress_resets_the_retry_budget(dump_server, tmp_path):
    dump_server.drop_after(DUMP, 20_000, times=5)

    path = fetch(dump_server.url(DUMP), tmp_path, retries=1)

    assert len(dump_server.seen(DUMP)) == 6
    assert path.read_bytes() == DATA


def test_failed_download_never_has_the_final_name(server, tmp_path):
    server.files[DUMP] = DATA
    server.drop_after(DUMP, 30_000, times=1)

    # verify=False: only the length check stands between a short body and the final name.
    with pytest.raises(DownloadError, match="30000 bytes") as error:
        fetch(server.url(DUMP), tmp_path, verify=False, retries=0, chunk_size=4096)

    assert server.url(DUMP) in str(error.value) and "resumes" in str(error.value)
    assert _listing(tmp_path) == [f"{NAME}.part"]
    assert (tmp_path / f"{NAME}.part").read_bytes() == DATA[:30_000]

    assert fetch(server.url(DUMP), tmp_path, verify=False).read_bytes() == DATA
    assert [s.range for s in server.seen(DUMP)] == [None, "bytes=30000-"]


def test_server_error_is_retried(dump_server, tmp_path):
    dump_server.fail(DUMP, 500, times=1)

    assert fetch(dump_server.url(DUMP), tmp_path).read_bytes() == DATA
    assert len(dump_server.seen(DUMP)) == 2


def test_timeout_is_retried(dump_server, tmp_path):
    dump_server.stall(DUMP, 1.0, times=1)

    assert fetch(dump_server.url(DUMP), tmp_path, timeout=0.2).read_bytes() == DATA
    assert len(dump_server.seen(DUMP)) == 2


def test_retries_are_bounded(dump_server, tmp_path):
    dump_server.fail(DUMP, 503, times=100)

    with pytest.raises(DownloadError, match="503") as error:
        fetch(dump_server.url(DUMP), tmp_path, retries=2)

    assert dump_server.url(DUMP) in str(error.value)
    assert len(dump_server.seen(DUMP)) == 3
    assert not (tmp_path / NAME).exists()


def test_server_ignoring_range_restarts_from_zero(dump_server, tmp_path):
    dump_server.ignore_range = True
    (tmp_path / f"{NAME}.part").write_bytes(b"x" * 1000)  # garbage: would corrupt the file if appended to

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == ["bytes=1000-"]
    assert path.read_bytes() == DATA


def test_complete_part_answered_416_is_verified_and_kept(dump_server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(DATA)

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == [f"bytes={len(DATA)}-"]
    assert path.read_bytes() == DATA
    assert _listing(tmp_path) == [NAME]


def test_part_longer_than_the_file_is_restarted(dump_server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(DATA + b"trailing junk")

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == [f"bytes={len(DATA) + 13}-", None]
    assert path.read_bytes() == DATA


# --- failures ------------------------------------------------------------------------------------


def test_checksum_mismatch_leaves_nothing_behind(server, tmp_path):
    server.files[DUMP] = DATA
    server.files[SHA1SUMS] = _sums(hashlib.sha1, {NAME: b"a different file"})

    with pytest.raises(DownloadError) as error:
        fetch(server.url(DUMP), tmp_path)

    message = str(error.value)
    assert server.url(DUMP) in message and "sha1" in message
    assert hashlib.sha1(b"a different file").hexdigest() in message
    assert hashlib.sha1(DATA).hexdigest() in message
    assert "re-run" in message
    assert _listing(tmp_path) == []


def test_404_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="404") as error:
        fetch(server.url(DUMP), tmp_path, verify=False)

    assert server.url(DUMP) in str(error.value)
    assert len(server.seen(DUMP)) == 1
    assert _listing(tmp_path) == []


def test_unverifiable_download_is_refused_unless_verify_is_off(server, tmp_path):
    server.files[DUMP] = DATA

    with pytest.raises(DownloadError, match="verify_download") as error:
        fetch(server.url(DUMP), tmp_path)
    assert server.url(DUMP) in str(error.value)
    assert server.seen(DUMP) == []  # refused before downloading anything

    assert fetch(server.url(DUMP), tmp_path, verify=False).read_bytes() == DATA
    assert len(server.seen(DUMP)) == 1


def test_existing_final_file_is_verified_not_downloaded(dump_server, tmp_path):
    (tmp_path / NAME).write_bytes(DATA)

    assert fetch(dump_server.url(DUMP), tmp_path) == tmp_path / NAME
    assert dump_server.seen(DUMP) == []
    assert len(dump_server.seen(SHA1SUMS)) == 1

    dump_server.log.clear()
    assert fetch(dump_server.url(DUMP), tmp_path, verify=False) == tmp_path / NAME
    assert dump_server.log == []


def test_corrupt_existing_final_file_is_reported_not_replaced(dump_server, tmp_path):
    (tmp_path / NAME).write_bytes(b"corrupt")

    with pytest.raises(DownloadError, match="delete") as error:
        fetch(dump_server.url(DUMP), tmp_path)

    assert str(tmp_path / NAME) in str(error.value)
    assert (tmp_path / NAME).read_bytes() == b"corrupt"
    assert dump_server.seen(DUMP) == []


@pytest.mark.parametrize("url", [
    "ftp://dumps.wikimedia.org/bgwiki/latest/bgwiki-latest-pages-articles.xml.bz2",
    "file:///etc/passwd",
    "dumps.wikimedia.org/bgwiki/latest/bgwiki-latest-pages-articles.xml.bz2",
    "https://dumps.wikimedia.org/bgwiki/latest/",
])
def test_unusable_urls_are_rejected(url, tmp_path):
    with pytest.raises(DownloadError):
        fetch(url, tmp_path, verify=False)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_fetches_of_one_file_download_it_once(dump_server, tmp_path):
    dump_server.stall(DUMP, 0.3, times=1)  # keep the first download running while the second arrives
    results, errors = [], []

    def run():
        try:
            results.append(fetch(dump_server.url(DUMP), tmp_path))
        except Exception as e:  # reported below, not swallowed
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert results == [tmp_path / NAME] * 2
    assert len(dump_server.seen(DUMP)) == 1
    assert (tmp_path / NAME).read_bytes() == DATA
