"""Local paths and cloud URIs (s3://, gs://, ...) through one pyarrow filesystem interface."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s\"]+@")


def resolve(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI that pyarrow understands."""
    if "://" in uri_or_path:
        return pafs.FileSystem.from_uri(uri_or_path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri_or_path))


def is_local(uri_or_path: str) -> bool:
    return "://" not in uri_or_path or uri_or_path.startswith("file://")


def absolute(uri_or_path: str) -> str:
    """A local path made absolute (Ray's workers do not run in the driver's directory); URIs as they are."""
    return uri_or_path if "://" in uri_or_path else os.path.abspath(os.path.expanduser(uri_or_path))


def join(base: str, *parts: str) -> str:
    """Join path parts of a filesystem path (always '/', also for the local filesystem)."""
    return posixpath.join(base, *parts)


def child(uri_or_path: str, *parts: str) -> str:
    """``uri/part/...`` for a local path or a URI, keeping a URI's query string
    (``?endpoint_override=...``) at the end where it belongs."""
    base, sep, query = uri_or_path.partition("?")
    return posixpath.join(base.rstrip("/"), *parts) + sep + query


def redact(text: str) -> str:
    """Hide credentials written into URIs (``s3://key:secret@bucket``) before they are logged or saved."""
    return _USERINFO.sub(r"\1***@", text)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def missing_location(uri_or_path: str) -> bool:
    """Whether ``uri_or_path`` names a folder or file (a local path or a URI) that does not exist. A model
    setting may also be a hub id (``name``, ``org/name``) or ``packaged:<name>``: those are not locations."""
    fs, path = resolve(uri_or_path)
    if exists(fs, path):
        return False
    return "://" in uri_or_path or uri_or_path.startswith((".", "/", "~")) or uri_or_path.count("/") > 1


def size(fs: pafs.FileSystem, path: str) -> int:
    return fs.get_file_info(path).size


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a file so that readers see either nothing or all of it.

    Locally: write a temporary sibling, then rename (atomic on POSIX). Object stores publish an
    object only when its upload completes, so there the direct write is already atomic.
    """
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    os.replace(tmp, path)


def temporary_sibling(fs: pafs.FileSystem, path: str) -> str:
    """Where to stage ``path`` before :func:`publish`: itself on object stores, a temp name locally."""
    if isinstance(fs, pafs.LocalFileSystem):
        return f"{path}.tmp-{uuid.uuid4().hex}"
    return path


def publish(fs: pafs.FileSystem, staged: str, path: str) -> None:
    if staged != path:
        os.replace(staged, path)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SOURCE_RECORD = ".bg2vec-source.json"  # in a cached copy, written last: what it is a copy of


def model_cache() -> Path:
    """Where models are kept on this machine: ``$BG2VEC_CACHE/models``, default ``~/.cache/bg2vec/models``."""
    base = os.environ.get("BG2VEC_CACHE")
    return Path(base) / "models" if base else Path.home() / ".cache" / "bg2vec" / "models"


@contextlib.contextmanager
def locked(path: Path, *, read_only_ok: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) across the processes of this machine.
    ``read_only_ok``: where the lock file cannot be created (a read-only folder, in which nothing can be
    written anyway), go on without the lock."""
    import fcntl

    try:
        handle = open(path, "a")
    except OSError:
        if not read_only_ok:
            raise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def localize(uri_or_path: str, skip_suffixes: tuple[str, ...] = ()) -> str:
    """A local path for ``uri_or_path``: itself when local (or a hub id), else a copy without the files
    ending in ``skip_suffixes`` (WEIGHT_SUFFIXES: just the tokenizer and configs).
    ``packaged:<name>`` is the packaged model's folder (bg2vec.modeling.packaged).

    The copy is kept in :func:`model_cache` under a hash of the URI (credentials left out) and
    ``skip_suffixes``, and reused while the remote files keep their names, sizes and modification times
    (pyarrow lists no ETags; object stores keep whole seconds); when they change, a fresh copy replaces
    it. A copy is downloaded beside the cache folder and renamed into place whole, under a lock that makes
    the workers of one machine download it once."""
    if uri_or_path.startswith("packaged:"):
        from bg2vec.modeling.packaged import resolve as resolve_packaged

        return resolve_packaged(uri_or_path)
    if is_local(uri_or_path):
        return uri_or_path
    fs, path = resolve(uri_or_path)
    files = {posixpath.relpath(info.path, path): info
             for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if info.type == pafs.FileType.File and not info.path.endswith(skip_suffixes)}
    source = {"uri": redact(uri_or_path), "skip_suffixes": sorted(skip_suffixes),
              "files": {name: [info.size, info.mtime_ns] for name, info in sorted(files.items())}}
    key = hashlib.sha256(json.dumps([source["uri"], source["skip_suffixes"]]).encode()).hexdigest()[:24]
    cache = model_cache()
    target = cache / key
    if _copy_of(target) == source:
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / f".{key}.lock"):
        if _copy_of(target) == source:  # another process copied it while this one waited
            return str(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
        stale = cache / f".{key}.old-{uuid.uuid4().hex}"
        try:
            for name, info in files.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(info.path, str(staging / name), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
            (staging / SOURCE_RECORD).write_text(json.dumps(source))
            if target.exists():  # the remote changed: its old copy goes
                target.rename(stale)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(stale, ignore_errors=True)
    return str(target)


def _copy_of(folder: Path) -> dict | None:
    """What a cached copy is a copy of (its SOURCE_RECORD); None: no complete copy there."""
    try:
        return json.loads((folder / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _location(uri_or_path: str, existing: bool) -> tuple[str, str] | None:
    """(filesystem, normalised path) to compare locations by; None for what names no folder (a hub id,
    ``packaged:``, a web URL; with ``existing``, a local path that does not exist)."""
    if uri_or_path.startswith(("packaged:", "http://", "https://")):
        return None
    if is_local(uri_or_path):
        path = os.path.realpath(os.path.expanduser(uri_or_path.removeprefix("file://")))  # symlinks followed
        return ("file", path) if os.path.lexists(path) or not existing else None
    scheme, _, rest = uri_or_path.partition("?")[0].partition("://")
    bucket, _, path = rest.partition("/")
    return scheme, posixpath.normpath(f"/{bucket.rpartition('@')[2]}/{path}").rstrip("/")  # credentials left out


def check_apart(output: str, inputs: dict[str, str | None], output_key: str = "output") -> None:
    """Refuse an output that is one of a job's inputs, lies inside one or contains one, whatever ``overwrite``
    says: replacing or clearing that output would delete the input (a trained model, a prepared corpus).

    ``inputs``: key -> path or URI as the user gave it (None: not set)."""
    from bg2vec.errors import Bg2VecError

    out = _location(output, existing=False)
    for key, value in inputs.items():
        where = _location(value, existing=True) if value else None
        if out is None or where is None or out[0] != where[0]:
            continue
        relation = ("is" if out[1] == where[1] else "is inside" if _within(out[1], where[1])
                    else "contains" if _within(where[1], out[1]) else None)
        if relation:
            raise Bg2VecError(f"{output_key}={redact(output)} {relation} {key}={redact(value)}: writing there could "
                              f"delete the {key}; choose an {output_key} folder apart from the job's inputs")


def _within(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")
