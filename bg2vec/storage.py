"""Local paths and cloud URIs (s3://, gs://, ...) through one pyarrow filesystem interface."""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
import uuid

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


def localize(uri_or_path: str, skip_suffixes: tuple[str, ...] = ()) -> str:
    """A local path for ``uri_or_path``: itself when local (or a hub id), else a downloaded copy
    without the files ending in ``skip_suffixes`` (WEIGHT_SUFFIXES: just the tokenizer and configs).
    ``packaged:<name>`` is the packaged model's folder (bg2vec.modeling.packaged)."""
    if uri_or_path.startswith("packaged:"):
        from bg2vec.modeling.packaged import resolve as resolve_packaged

        return resolve_packaged(uri_or_path)
    if is_local(uri_or_path):
        return uri_or_path
    fs, path = resolve(uri_or_path)
    target = tempfile.mkdtemp(prefix="bg2vec-")
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type == pafs.FileType.File and not info.path.endswith(skip_suffixes):
            local = os.path.join(target, os.path.relpath(info.path, path))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            pafs.copy_files(info.path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target


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
