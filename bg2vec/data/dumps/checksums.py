"""Checksums that Wikimedia publishes beside its dump files, and streaming file digests."""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request

from bg2vec.data.dumps.http_policy import USER_AGENT, pause_before_retry
from bg2vec.errors import DownloadError

_HASH_CHUNK = 1 << 20
_SUMS_ALGORITHMS = ("sha1", "md5")  # order of preference
_DIGEST_LENGTH = {"sha1": 40, "md5": 32}
_DUMP_NAME = re.compile(r"(?P<wiki>[^-]+)-(?P<date>\d{8}|latest)-(?P<rest>.+)")
_HEX = re.compile(r"[0-9a-f]+")


def published_checksum(url: str, *, timeout: float = 60.0, retries: int = 2) -> tuple[str, str] | None:
    """(algorithm, hexdigest) for a dumps.wikimedia.org-style file, from the sums file published
    beside it; None if none is published.

    For ``.../<wiki>-<date>-<rest>`` the sums files are ``<wiki>-<date>-sha1sums.txt`` (preferred) and
    ``<wiki>-<date>-md5sums.txt`` in the same directory. For ``<date>`` = ``latest`` an entry may name
    the dated file ``<wiki>-<8 digits>-<rest>``. A missing sums file, or one without an entry for the
    file, gives None.
    """
    name, match = _dump_name(url)
    if match is None:
        return None
    for algorithm, sums_url in zip(_SUMS_ALGORITHMS, sums_urls(url)):
        text = _get_text(sums_url, timeout, retries)
        if text is not None and (digest := _find_entry(text, name, match, algorithm)):
            return algorithm, digest
    return None


def sums_urls(url: str) -> list[str]:
    """The sums files that may list ``url`` (none when it is not a <wiki>-<date>-<kind> file name)."""
    _, match = _dump_name(url)
    if match is None:
        return []
    parts = urllib.parse.urlsplit(url)
    directory = posixpath.dirname(parts.path)
    return [
        urllib.parse.urlunsplit((parts.scheme, parts.netloc,
                                 f"{directory}/{match['wiki']}-{match['date']}-{algorithm}sums.txt", "", ""))
        for algorithm in _SUMS_ALGORITHMS
    ]


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of the file at path, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _dump_name(url: str) -> tuple[str, re.Match | None]:
    name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))
    return name, _DUMP_NAME.fullmatch(name)


def _find_entry(text: str, name: str, match: re.Match, algorithm: str) -> str | None:
    dated = None
    if match["date"] == "latest":
        dated = re.compile(rf"{re.escape(match['wiki'])}-(\d{{8}})-{re.escape(match['rest'])}")
    best: tuple[str, str] | None = None  # (date, digest) of the newest dated entry
    for line in text.splitlines():
        fields = line.split(None, 1)
        if len(fields) != 2:
            continue
        digest, entry = fields[0].lower(), posixpath.basename(fields[1].strip().lstrip("*"))
        if len(digest) != _DIGEST_LENGTH[algorithm] or not _HEX.fullmatch(digest):
            continue
        if entry == name:
            return digest
        if dated is not None and (m := dated.fullmatch(entry)) and (best is None or m[1] > best[0]):
            best = (m[1], digest)
    return best[1] if best else None


def _get_text(url: str, timeout: float, retries: int) -> str | None:
    """Body of a small text file; None on 404/410."""
    failures = 0
    while True:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in (404, 410):
                return None
            if not (e.code >= 500 or e.code in (408, 429)):
                raise DownloadError(f"Cannot read the checksum file {url}: the server answered HTTP "
                                    f"{e.code} {e.reason}. Check the URL.") from None
            reason: object = f"HTTP {e.code} {e.reason}"
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
        failures += 1
        if failures > retries:
            raise DownloadError(f"Cannot read the checksum file {url} after {retries} retries: {reason}. "
                                "Check the network connection and that the server is up.")
        pause_before_retry(failures)
