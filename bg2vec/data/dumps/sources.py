"""Where the dump comes from: a local file, a URL (downloaded and verified) or a cloud URI."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from bg2vec import storage
from bg2vec.data.config import PrepareConfig
from bg2vec.data.dumps import download
from bg2vec.data.dumps.checksums import file_digest
from bg2vec.data.dumps.dump_reader import sniff_codec
from bg2vec.errors import DownloadError, DumpError

log = logging.getLogger(__name__)
_PACKAGE_PARENT = Path(__file__).resolve().parents[3]  # so "bg2vec/resources/..." works anywhere


@dataclass(frozen=True)
class DumpSource:
    uri: str
    """Absolute local path or cloud URI that workers open."""
    display: str
    """The dump as the user gave it, for messages."""
    size: int
    codec: str
    index_uri: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return storage.is_local(self.uri)

    def to_json(self) -> dict:
        return {"dump": self.display, "uri": self.uri, "size": self.size, "codec": self.codec,
                "multistream_index": self.index_uri, **self.checksums}


def resolve_dump(cfg: PrepareConfig) -> DumpSource:
    """Find (or download) the dump and its multistream index; check that the dump is not empty."""
    if cfg.dump.startswith(("http://", "https://")):
        uri = str(_download(cfg.dump, cfg))
        index = cfg.multistream_index or _index_name(cfg.dump)
        if index and index.startswith(("http://", "https://")):
            index = _download_index(index, cfg, required=bool(cfg.multistream_index))
    else:
        uri = _find(cfg.dump, "dump")
        index = _find(cfg.multistream_index, "multistream_index") if cfg.multistream_index else None
        if index is None and (sibling := _index_name(uri)):
            fs, path = storage.resolve(sibling)
            index = sibling if storage.exists(fs, path) else None
    fs, path = storage.resolve(uri)
    checksums = {"sha1": file_digest(path, "sha1")} if storage.is_local(uri) else {}
    display = storage.redact(cfg.dump)
    return DumpSource(uri, display, storage.size(fs, path), sniff_codec(fs, path, display), index, checksums)


def _find(value: str, key: str) -> str:
    if "://" in value:
        fs, path = storage.resolve(value)
        if not storage.exists(fs, path):
            raise DumpError(f"{key}={storage.redact(value)} does not exist")
        return value
    candidates = [Path(value).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(_PACKAGE_PARENT / value)
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    looked = " or ".join(str(c.resolve()) for c in candidates)
    raise DumpError(f"{key}={value}: no such file (looked for {looked}); check the path, or give an "
                    f"https://dumps.wikimedia.org/ URL to download the dump")


def _index_name(dump: str) -> str | None:
    """``X-multistream.xml.bz2`` -> ``X-multistream-index.txt.bz2`` (Wikimedia's naming)."""
    if dump.endswith("-multistream.xml.bz2"):
        return dump[: -len(".xml.bz2")] + "-index.txt.bz2"
    return None


def _download(url: str, cfg: PrepareConfig) -> Path:
    log.info("downloading %s into %s", url, cfg.download_dir)
    reporter = _ProgressLog(url)
    return download.fetch(url, os.path.expanduser(cfg.download_dir), verify=cfg.verify_download,
                          progress=reporter)


def _download_index(url: str, cfg: PrepareConfig, required: bool) -> str | None:
    try:
        return str(_download(url, cfg))
    except DownloadError as e:
        if required:
            raise
        log.warning("no multistream index at %s (%s); the dump will be read as one stream", url, e)
        return None


class _ProgressLog:
    def __init__(self, url: str):
        self.url, self.last = url, -1

    def __call__(self, done: int, total: int | None) -> None:
        pct = int(100 * done / total) if total else None
        if pct is not None and pct // 10 != self.last:
            self.last = pct // 10
            log.info("%s: %d%% (%.1f of %.1f MB)", self.url, pct, done / 1e6, total / 1e6)
