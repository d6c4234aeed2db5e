"""Resumable, checksum-verified downloads of Wikimedia dump files (standard library only).

The checksums come from :mod:`bg2vec.data.dumps.checksums`."""

from __future__ import annotations

import http.client
import os
import posixpath
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bg2vec.data.dumps.checksums import file_digest, published_checksum, sums_urls
from bg2vec.data.dumps.http_policy import USER_AGENT, pause_before_retry
from bg2vec.errors import DownloadError
from bg2vec.storage import locked

PROGRESS_INTERVAL = 0.25  # minimum seconds between progress callbacks

ProgressCallback = Callable[[int, int | None], None]


class _Transient(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx); the next attempt resumes."""

    def __init__(self, reason: str, received: int) -> None:
        super().__init__(reason)
        self.received = received


def fetch(
    url: str,
    dest_dir: str | os.PathLike,
    *,
    verify: bool = True,
    retries: int = 5,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download url into dest_dir/<basename>, resuming a previous partial download; return the final path.

    Bytes go to ``<name>.part``, renamed to ``<name>`` only once complete and, when ``verify``, matching
    the checksum published beside the file (see :func:`published_checksum`). An existing ``<name>`` is
    verified (when ``verify``) and returned without downloading. ``retries`` bounds consecutive failed
    attempts that received nothing; an attempt that made progress resets the count, so a long download
    over a flaky link keeps resuming. ``progress(bytes_done, total_or_None)`` is called at most every
    ``PROGRESS_INTERVAL`` seconds, and once at the end. Raises DownloadError on failure.
    """
    name = _file_name(url)
    dest = Path(dest_dir)
    final = dest / name
    if not verify and final.is_file():
        return final
    expected = None
    if verify:
        # Before any download, so an unverifiable URL fails fast instead of after hundreds of MB.
        expected = published_checksum(url, timeout=timeout, retries=retries)
        if expected is None:
            sums = ", ".join(sums_urls(url)) or "none (not a <wiki>-<date>-<kind> dump file name)"
            raise DownloadError(
                f"No checksum is published for {url} (sums files tried: {sums}), so the download "
                "cannot be verified. If you trust the source, set verify_download=false to download "
                "it without verification."
            )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"Cannot create the download directory {dest} for {url}: {e}. "
                            "Choose a writable directory.") from None
    part = dest / f"{name}.part"
    with locked(dest / f".{name}.lock", read_only_ok=True):  # fetches of one file would interleave the .part
        if final.is_file():
            if expected is not None:
                _check_existing(final, url, expected)
            return final
        _download(url, part, retries=retries, timeout=timeout, chunk_size=chunk_size,
                  report=_Progress(progress))
        if expected is not None:
            _verify_part(part, url, expected)
        os.replace(part, final)
    return final


# --- downloading -------------------------------------------------------------------------------


class _Progress:
    """Rate-limits the user's progress callback."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.total: int | None = None
        self._last_time: float | None = None
        self._last_value: tuple[int, int | None] | None = None

    def __call__(self, done: int, total: int | None, *, final: bool = False) -> None:
        self.total = total
        if self.callback is None or (done, total) == self._last_value:
            return
        now = time.monotonic()
        if final or self._last_time is None or now - self._last_time >= PROGRESS_INTERVAL:
            self._last_time, self._last_value = now, (done, total)
            self.callback(done, total)


def _download(url: str, part: Path, *, retries: int, timeout: float, chunk_size: int,
              report: _Progress) -> None:
    failures = 0
    while True:
        try:
            _attempt(url, part, timeout, chunk_size, report)
        except _Transient as e:
            failures = 1 if e.received else failures + 1
            if failures > retries:
                kept = _size(part)
                keep = (f" The {kept} bytes received so far are kept in {part}; re-running resumes "
                        "from there." if kept else "")
                raise DownloadError(
                    f"Downloading {url} failed after {retries} retries: {e}.{keep} Check the network "
                    "connection and that the server is up, or allow more retries."
                ) from None
            pause_before_retry(failures)
        else:
            report(_size(part), report.total, final=True)
            return


def _attempt(url: str, part: Path, timeout: float, chunk_size: int, report: _Progress) -> None:
    """One request, appending to (or restarting) part; raises _Transient on a retryable failure."""
    offset = _size(part)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            total = _content_range(e.headers.get("Content-Range"))[1]
            if total is not None and total != offset:  # part is not a prefix of this file
                _truncate(part, url)
                return _attempt(url, part, timeout, chunk_size, report)
            report.total = total
            return  # part already holds the whole file; verification decides
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"the server answered HTTP {e.code} {e.reason}", 0) from None
        dated = (" Wikimedia removes dated dumps after a few months, so a newer date or 'latest' may be needed."
                 if "wikimedia" in urllib.parse.urlsplit(url).netloc else "")
        raise DownloadError(
            f"Cannot download {url}: the server answered HTTP {e.code} {e.reason}. Check the URL.{dated}"
        ) from None
    except (OSError, http.client.HTTPException) as e:
        _raise_network_error(url, e, received=0)

    with response:
        length = _int(response.headers.get("Content-Length"))
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                _truncate(part, url)
                raise _Transient(f"the server resumed at byte {start} instead of {offset}", 0)
            mode = "ab"
        elif response.status == 200:  # Range ignored (or none sent): start over
            offset, mode = 0, "wb"
            total = length
        else:
            raise DownloadError(f"Cannot download {url}: unexpected HTTP {response.status} "
                                f"{response.reason} from the server.")
        if total is None and length is not None:
            total = offset + length
        received = 0
        report(offset, total)
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(chunk_size)
                    except http.client.IncompleteRead as e:  # chunked body cut short
                        out.write(e.partial)
                        raise _Transient("the connection closed mid-transfer",
                                         received + len(e.partial)) from None
                    except (OSError, http.client.HTTPException) as e:
                        _raise_network_error(url, e, received)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    report(offset + received, total)
                # http.client signals a short fixed-length body only by an early end.
                if length is not None and received < length:
                    raise _Transient(f"the connection closed after {received} of {length} bytes", received)
                out.flush()
                os.fsync(out.fileno())  # on disk before the rename can publish it under the final name
        except OSError as e:
            raise DownloadError(f"Cannot write {part} while downloading {url}: {e}. "
                                "Check free disk space and permissions.") from None


def _raise_network_error(url: str, error: Exception, received: int):
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, ssl.SSLCertVerificationError):  # retrying will not fix a certificate
        raise DownloadError(f"Cannot download {url}: TLS certificate verification failed ({reason}). "
                            "Check the host name and the system's CA certificates.") from None
    raise _Transient(str(reason) or type(reason).__name__, received) from None


def _verify_part(part: Path, url: str, expected: tuple[str, str]) -> None:
    algorithm, digest = expected
    actual = file_digest(part, algorithm)
    if actual != digest:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"Checksum mismatch for {url}: the published {algorithm} is {digest} but the downloaded "
            f"file's is {actual}. The download was deleted; re-running downloads it again from scratch. "
            "If this repeats, the server may be serving a different dump than its sums file describes."
        )


def _check_existing(final: Path, url: str, expected: tuple[str, str]) -> None:
    algorithm, digest = expected
    actual = file_digest(final, algorithm)
    if actual != digest:
        # Not deleted automatically: it is a finished file the user may rely on.
        raise DownloadError(
            f"{final} already exists but its {algorithm} is {actual}, not the {digest} published for "
            f"{url}. It is corrupt, or the dump behind the URL has changed since (as 'latest' does); "
            f"delete {final} and re-run to download it again."
        )


# --- helpers -----------------------------------------------------------------------------------


def _file_name(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except (TypeError, ValueError, AttributeError):
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise DownloadError(
            f"Cannot download {url!r}: only http:// and https:// URLs are supported, e.g. "
            "https://dumps.wikimedia.org/bgwiki/latest/bgwiki-latest-pages-articles.xml.bz2."
        )
    name = urllib.parse.unquote(posixpath.basename(parts.path))
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DownloadError(f"Cannot download {url}: the URL does not end in a file name to save it "
                            "under; give the full URL of the dump file.")
    return name


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from 'bytes 100-199/200' or 'bytes */200'."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if m is None:
        return None, None
    return _int(m[1]), _int(m[2])


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _truncate(part: Path, url: str) -> None:
    try:
        part.unlink(missing_ok=True)
    except OSError as e:
        raise DownloadError(f"Cannot remove the stale partial download {part} of {url}: {e}. "
                            "Delete it by hand and re-run.") from None



