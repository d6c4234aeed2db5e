"""The official Bulgarian evaluation sets: where each file is published, its checksum, and the cache.

A task file named by a relative path (``sib200_bul/train.tsv``) is read from ``data_dir`` when that
is set (a copy you downloaded yourself), else from the cache (``cache_dir``, default
``~/.cache/bg2vec/eval``; ``$BG2VEC_CACHE/eval`` when that variable is set). A file missing from the
cache is downloaded from where its authors publish it, at a pinned commit, as MTEB pins its
datasets' revisions: resumable (an interrupted download continues from its ``.part`` file),
retried, checked against the SHA-256 recorded here (of the file as used, so an archive's member is
checked after extraction), and moved into place only once verified, so the cache never holds a
half-written or altered file.

- SIB-200 bul_Cyrl (Adelani et al., 2024; Apache-2.0, text from FLORES under CC BY-SA 4.0):
  ``sib200_bul/{train,dev,test}.tsv``, ``labels.txt``, from github.com/dadelani/sib-200.
- EXAMS Bulgarian (Hardalov et al., 2020; CC BY-SA 4.0): ``exams_bg/{train_bg,dev_bg,dev_bg_with_para}.jsonl``,
  each a member of a ``.tar.gz`` in github.com/mhardalov/exams-qa.
- Tatoeba bul-eng (Artetxe & Schwenk, 2019; CC BY 2.0 FR), MTEB's Tatoeba bitext mining pair:
  ``tatoeba_bul_eng/tatoeba.bul-eng.{bul,eng}``, from github.com/facebookresearch/LASER.

``mirror`` (the evaluate config's ``download_mirror``) replaces the scheme and host of every URL,
keeping its path: a local or corporate mirror of the same files.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bg2vec.data.dumps.checksums import file_digest
from bg2vec.data.dumps.download import fetch
from bg2vec.errors import Bg2VecError, DownloadError

_SIB200 = "https://raw.githubusercontent.com/dadelani/sib-200/593cea88519930f776c1a4a1980b6a35b39dca57/data/annotated/bul_Cyrl"
_EXAMS = ("https://raw.githubusercontent.com/mhardalov/exams-qa/f859e665de6c370f6214ca5f36a34ace36ada6cb/"
          "data/exams/cross-lingual")
_TATOEBA = ("https://raw.githubusercontent.com/facebookresearch/LASER/fec5c7d63daa2bea9d127e8252b10e87278586c0/"
            "data/tatoeba/v1")


@dataclass(frozen=True)
class RemoteFile:
    """One published evaluation file."""

    path: str
    """Where it lives in the cache (and in a ``data_dir`` copy)."""
    url: str
    """Where its authors publish it, at a pinned commit."""
    sha256: str
    """Of the file as used (for an archive: of the member, after extraction)."""
    member: str | None = None
    """The file's name inside the ``.tar.gz`` at ``url``; None: the URL is the file itself."""


OFFICIAL_FILES: dict[str, RemoteFile] = {f.path: f for f in [
    RemoteFile("sib200_bul/train.tsv", f"{_SIB200}/train.tsv",
               "a4b7ae98cf5780fb4b8d7938551a69a635af3d7382656fcb4e11ea465ef977b2"),
    RemoteFile("sib200_bul/dev.tsv", f"{_SIB200}/dev.tsv",
               "0b027aad43a43b45b7d292254a0b6a73be336ef3c8d216c6bbe891c83e57d3c3"),
    RemoteFile("sib200_bul/test.tsv", f"{_SIB200}/test.tsv",
               "b17f6e3cc0af539aa8f3dd9e56ee38fdf146c2c3be73dbc90784e13e0768d166"),
    RemoteFile("sib200_bul/labels.txt", f"{_SIB200}/labels.txt",
               "f52879a3f02d9edea97f85e3839f242ed4853dd6459d57dfaec1501dc37e95f7"),
    RemoteFile("exams_bg/train_bg.jsonl", f"{_EXAMS}/train_bg.jsonl.tar.gz",
               "bb20ab081975ce690a69454c20bc9f9bb9e7d2871f7542a299762802e6854471", member="train_bg.jsonl"),
    RemoteFile("exams_bg/dev_bg.jsonl", f"{_EXAMS}/dev_bg.jsonl.tar.gz",
               "9c00ad79b81be2562e91dd02f6a3d93bd0e3e38a2247a5a244d227ba22cfbc16", member="dev_bg.jsonl"),
    RemoteFile("exams_bg/dev_bg_with_para.jsonl", f"{_EXAMS}/with_paragraphs/dev_bg_with_para.jsonl.tar.gz",
               "11f44d09bc486dc4f9dfd3353c3be6a4b91392aa7abae3ce0d76532d83600db1",
               member="dev_bg_with_para.jsonl"),
    RemoteFile("tatoeba_bul_eng/tatoeba.bul-eng.bul", f"{_TATOEBA}/tatoeba.bul-eng.bul",
               "f9fa90cf3599d8c87f7a6ed22f5d648e3ce6687c705656a8c8ea088d891f79d5"),
    RemoteFile("tatoeba_bul_eng/tatoeba.bul-eng.eng", f"{_TATOEBA}/tatoeba.bul-eng.eng",
               "4b03b3b52ffb7cf4286e0c4453c90910a3021546f160bdf0e4d39d1f45bfbc0b"),
]}


def default_cache_dir() -> Path:
    root = os.environ.get("BG2VEC_CACHE")
    return Path(root) / "eval" if root else Path.home() / ".cache" / "bg2vec" / "eval"


def cached_file(path: str, cache_dir: str | Path, *, mirror: str | None = None,
                files: dict[str, RemoteFile] = OFFICIAL_FILES) -> Path:
    """The official file ``path`` from the cache, downloaded and verified first if it is not there."""
    remote = files.get(path)
    target = Path(cache_dir) / path
    if remote is None:
        if target.is_file():  # put there by hand
            return target
        raise Bg2VecError(f"{path} is not in {target.parent} and is not an official evaluation file that "
                          f"bg2vec can download ({', '.join(sorted(files))}); set data_dir= to the folder "
                          f"that holds it, or give an absolute path")
    if target.is_file():
        return target
    url = _mirrored(remote.url, mirror)
    downloads = target.parent / ".downloads"
    print(f"[evaluate] downloading {path} from {url}", flush=True)
    try:
        fetched = fetch(url, downloads, verify=False)
    except DownloadError as e:
        raise Bg2VecError(f"cannot download the evaluation file {path}: {e} Offline? Set data_dir= to a folder "
                          f"holding a downloaded copy (laid out as {path}), or download_mirror= to a mirror of "
                          f"{urllib.parse.urlsplit(remote.url).netloc}") from None
    staged = Path(tempfile.mkdtemp(prefix=".staged-", dir=target.parent))
    try:
        file = _extract(fetched, remote.member, staged, url) if remote.member else fetched
        digest = file_digest(file, "sha256")
        if digest != remote.sha256:
            fetched.unlink()  # a corrupt or altered download: the next run fetches it afresh
            raise Bg2VecError(f"the evaluation file {path} downloaded from {url} has SHA-256 {digest}, not the "
                              f"published file's {remote.sha256}: the download was corrupted or the file changed. "
                              f"Run again to download it afresh, or set data_dir= to a verified copy")
        os.replace(file, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if remote.member:
        fetched.unlink(missing_ok=True)
    return target


def _mirrored(url: str, mirror: str | None) -> str:
    if not mirror:
        return url
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path


def _extract(archive: Path, member: str, into: Path, url: str) -> Path:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extract(member, into, filter="data")
    except (tarfile.TarError, KeyError, OSError, EOFError) as e:
        archive.unlink(missing_ok=True)
        raise Bg2VecError(f"{url} is not a .tar.gz holding {member} ({e}); run again to download it afresh") from None
    return into / member
