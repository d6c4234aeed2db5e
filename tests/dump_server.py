"""A real local HTTP server of in-memory dump files, with the faults a mirror produces (a pytest
plugin: its fixtures serve tests/test_download.py and tests/test_checksums.py)."""

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

from bg2vec.data.dumps import http_policy

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


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(http_policy, "BACKOFF_BASE", 0.001)
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
    server.files[SHA1SUMS] = sums_file(hashlib.sha1, {NAME: DATA, "bgwiki-20241101-abstract.xml.gz": b"other"})
    return server


def sums_file(hash_factory, files: dict[str, bytes]) -> bytes:
    return "".join(f"{hash_factory(data).hexdigest()}  {name}\n" for name, data in files.items()).encode()
