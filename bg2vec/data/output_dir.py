"""Output directories completed by a manifest written last: claiming them, and publishing them.

:class:`PreparedDir` (jobs/prepare_data.py) and the pairs directory (jobs/pairs.py) share the rule: a
directory with ``manifest.json`` is complete; a run removes the manifest first, then what an earlier
run left in its subfolders, writes its files (each one published by rename), and the manifest last.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from bg2vec import storage
from bg2vec.errors import Bg2VecError

log = logging.getLogger(__name__)


class ManifestDir:
    """``DIR/<SUBDIRS>/`` and ``DIR/manifest.json``, local or on a cloud store."""

    SUBDIRS: tuple[str, ...] = ()
    CONTENT = "output"
    """What a complete directory holds, for the refusal to replace it."""

    def __init__(self, uri: str):
        # workers do not share the driver's working directory: hand them absolute locations
        self.uri = storage.absolute(uri)
        self.fs, self.base = storage.resolve(self.uri)
        self.manifest_path = storage.join(self.base, "manifest.json")

    def check_free(self, overwrite: bool) -> None:
        """Refuse to replace a complete directory unless asked to."""
        if not overwrite and storage.exists(self.fs, self.manifest_path):
            raise Bg2VecError(f"{storage.redact(self.uri)} already holds a complete {self.CONTENT} (manifest.json); "
                              f"pass overwrite=true to replace it, or choose another output")

    def claim(self) -> None:
        """Make the directory ready for a new run, removing what an earlier run left."""
        if storage.exists(self.fs, self.manifest_path):
            self.fs.delete_file(self.manifest_path)  # first: from here on it no longer looks complete
        for sub in self.SUBDIRS:
            path = storage.join(self.base, sub)
            if storage.exists(self.fs, path):
                log.info("removing %s left by an earlier run", path)
                self.fs.delete_dir(path)
        self.fs.create_dir(self.base, recursive=True)

    def discard(self) -> None:
        """Remove what a failed run wrote (never files it did not create)."""
        for sub in self.SUBDIRS:
            path = storage.join(self.base, sub)
            try:
                if storage.exists(self.fs, path):
                    self.fs.delete_dir(path)
            except OSError as e:
                log.warning("could not remove %s after the failure: %s", path, e)

    def write_manifest(self, manifest: dict) -> None:
        data = storage.redact(json.dumps(manifest, indent=2, ensure_ascii=False)).encode("utf-8")
        storage.write_bytes_atomic(self.fs, self.manifest_path, data)


def read_manifest(uri: str, key: str, what: str, producer: str) -> dict:
    """The manifest of a complete output directory; a clear error naming ``key=uri`` if it has none
    (the run that makes it has not finished)."""
    fs, base = storage.resolve(uri)
    path = storage.join(base, "manifest.json")
    if not storage.exists(fs, path):
        raise Bg2VecError(f"{key}={storage.redact(uri)} is not a {what} (no manifest.json): run {producer} first, or "
                          f"wait until it has finished")
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


class PreparedDir(ManifestDir):
    """``DIR/{pages,blocks/<split>,tokenizer}/`` and ``DIR/manifest.json``."""

    SUBDIRS = ("pages", "blocks", "tokenizer")
    CONTENT = "prepared dataset"

    @property
    def pages_uri(self) -> str:
        return storage.child(self.uri, "pages")

    @property
    def blocks_uri(self) -> str:
        return storage.child(self.uri, "blocks")

    def save_tokenizer(self, tokenizer) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            dest = storage.join(self.base, "tokenizer")
            self.fs.create_dir(dest, recursive=True)
            for name in os.listdir(tmp):
                with open(os.path.join(tmp, name), "rb") as f:
                    storage.write_bytes_atomic(self.fs, storage.join(dest, name), f.read())
