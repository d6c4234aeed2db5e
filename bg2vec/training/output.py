"""Copying local files to and from run storage and the output directory (local or cloud)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from bg2vec.errors import Bg2VecError
from bg2vec.modeling.encoder import CONFIG_NAME
from bg2vec.storage import child, exists, resolve, write_bytes_atomic


def output_state(output: str, marker: str = CONFIG_NAME) -> str:
    """"missing", "complete" (``marker``, the file written last, is there) or "other" (something else is)."""
    fs, path = resolve(output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    if exists(fs, f"{path}/{marker}"):
        return "complete"
    if info.type == pafs.FileType.Directory and not fs.get_file_info(pafs.FileSelector(path)):
        return "missing"
    return "other"


FAILURE_NAME = "failure.json"  # in the run directory: why the workers stopped without an output


def write_failure(run_dir: str, message: str) -> None:
    """Leave the reason a run stopped where the driver looks after ``fit()``: Ray Train V2's result
    only carries the metrics of the last checkpoint, not of a later report."""
    fs, path = resolve(child(run_dir, FAILURE_NAME))
    write_bytes_atomic(fs, path, json.dumps({"failure": message}).encode())


def take_failure(run_dir: str) -> str | None:
    """The message :func:`write_failure` left, removing it (a resumed run starts clean)."""
    fs, path = resolve(child(run_dir, FAILURE_NAME))
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        message = json.loads(f.read())["failure"]
    fs.delete_file(path)
    return message


def publish_dir(staging: Path, output: str, last: str = CONFIG_NAME) -> None:
    """Put ``staging``'s files at ``output``, replacing what is there; ``last`` goes last, so a
    directory that has it is complete."""
    fs, path = resolve(output)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        shutil.copytree(staging, tmp, dirs_exist_ok=True)
        _default_permissions(tmp)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        tmp.rename(target)
        return
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    config = staging / last
    if not config.is_file():
        raise Bg2VecError(f"internal: {staging} has no {last}")
    for file in sorted(p for p in staging.rglob("*") if p.is_file() and p != config):
        destination = f"{path}/{file.relative_to(staging).as_posix()}"
        fs.create_dir(destination.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(file), destination, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    pafs.copy_files(str(config), f"{path}/{last}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def _default_permissions(root: Path) -> None:
    """Temporary folders are private (0700); the published model is as readable as any new file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
