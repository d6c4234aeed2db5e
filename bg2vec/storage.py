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
