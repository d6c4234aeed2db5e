"""The pairs stage on Ray Data: prepared pages and/or the user's files -> pairs/{train,validation}/ -> manifest.

1. read: the pages files the prepared manifest names (:class:`ParquetFilesDatasource`, no CPU
   reserved); the user's files are read and checked on the driver first, so a bad record fails
   before anything is written;
2. mine: :func:`bg2vec.pairs.stages.mine_pages` (every kind of ``kinds``, drops counted by reason);
3. drop duplicates: grouped by the bucket of their (query, positive) hash,
   :func:`bg2vec.pairs.stages.dedup_bucket` keeps one copy of each pair;
4. write: :class:`PairsDatasink`, a file per bucket and split;
5. with ``model=``, hard negatives (:func:`bg2vec.pairs.negatives.mine_negatives`) added to those files;
6. ``manifest.json``, written last and atomically; on any failure the partial output is removed.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import DataContext
from ray.data.context import ShuffleStrategy

import bg2vec
from bg2vec import storage
from bg2vec.config import to_dict
from bg2vec.data.output_dir import ManifestDir
from bg2vec.data.parquet_source import ParquetFilesDatasource
from bg2vec.data.sinks import SPLITS
from bg2vec.data.splits import split_of
from bg2vec.errors import Bg2VecError, reraise_user_error
from bg2vec.pairs.config import STRUCTURED_KINDS, PairsConfig
from bg2vec.pairs.negatives import mine_negatives
from bg2vec.pairs.stages import PairsDatasink, dedup_bucket, mine_pages, pair_rows
from bg2vec.pairs.user_pairs import read_user_pairs
from bg2vec.ray_session import init_ray

log = logging.getLogger(__name__)
FORMAT = "bg2vec-pairs-v1"
PAGE_COLUMNS = ["id", "title", "text", "split"]


class PairsDir(ManifestDir):
    """``DIR/pairs/{train,validation}/`` and ``DIR/manifest.json``."""

    SUBDIRS = ("pairs",)
    CONTENT = "pairs dataset"

    @property
    def pairs_uri(self) -> str:
        return storage.child(self.uri, "pairs")


@dataclass
class PagesInput:
    files: list[str]
    """The pages files' URIs."""
    pages: int
    with_sections: bool
    """False for directories prepared before pages kept their sections: structured kinds are skipped."""


def mine_pairs(cfg: PairsConfig) -> dict:
    """Run the whole stage; return the manifest (also written to ``output/manifest.json``)."""
    started = time.time()
    storage.check_apart(cfg.output, {"data": cfg.data, "model": cfg.model,
                                     **{f"files[{i}]": f for i, f in enumerate(cfg.files)}})
    out = PairsDir(cfg.output)
    out.check_free(overwrite=cfg.overwrite)
    pages = _pages_input(cfg.data) if cfg.data else None
    user = read_user_pairs(cfg.files)
    if cfg.files:
        log.info("user pairs: %d read from %d file(s)", user.num_rows, len(cfg.files))
    out.claim()
    init_ray(cfg.ray_address)
    run_id = uuid.uuid4().hex[:8]
    try:
        with reraise_user_error(), _sort_shuffle():
            totals = _write_pairs(cfg, out, pages, user, run_id)
        if not sum(sum(c.values()) for c in totals["kept"].values()):
            raise Bg2VecError(f"no pair was kept (dropped: {dict(totals['dropped']) or 'none'}); check data=, "
                              f"files= and the length limits (min_query_chars, min_positive_chars)")
        negatives = None
        if cfg.model:
            log.info("mining hard negatives with %s", storage.redact(cfg.model))
            negatives = mine_negatives(out.uri, cfg.model, cfg.negatives)
        manifest = _manifest(cfg, pages, totals, negatives, time.time() - started)
        out.write_manifest(manifest)
    except BaseException:
        out.discard()
        raise
    return manifest


@contextlib.contextmanager
def _sort_shuffle():
    """Group the buckets with Ray Data's sort-based shuffle (tasks): its default hash shuffle starts
    aggregator actors first, which took 20 s of a 35 s run on the sample (2 CPUs) and buys nothing for a
    handful of buckets. (Scoped, so that the caller's DataContext is left as it was.)"""
    ctx = DataContext.get_current()
    saved, ctx.shuffle_strategy = ctx.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.shuffle_strategy = saved


def _pages_input(data: str) -> PagesInput:
    """The pages files of a prepared directory, how many pages they hold and whether they have sections
    (read from the Parquet footers: no page is read here)."""
    from bg2vec.data.pipeline import load_manifest

    manifest = load_manifest(data)
    files = [storage.child(storage.absolute(data), "pages", name) for name in manifest["files"]["pages"]]
    pages, with_sections = 0, True
    for uri in files:
        fs, path = storage.resolve(uri)
        metadata = pq.read_metadata(path, filesystem=fs)
        pages += metadata.num_rows
        with_sections &= "sections" in metadata.schema.to_arrow_schema().names
    if not with_sections:
        log.warning("data=%s was prepared before pages kept their sections: mining only %s from its text "
                    "(prepare it again for %s)", storage.redact(data), "crops and inverse_cloze",
                    ", ".join(STRUCTURED_KINDS))
    return PagesInput(files, pages, with_sections)


def _write_pairs(cfg: PairsConfig, out: PairsDir, pages: PagesInput | None, user: pa.Table, run_id: str) -> dict:
    n_buckets = max(1, len(pages.files) if pages else 0) + len(cfg.files)
    parts = []
    if pages:
        columns = PAGE_COLUMNS + (["sections"] if pages.with_sections else [])
        ds = ray.data.read_datasource(ParquetFilesDatasource(pages.files, columns), num_cpus=0,
                                      override_num_blocks=len(pages.files))
        log.info("mining %s from %d pages (%d file(s))", ", ".join(cfg.kinds), pages.pages, len(pages.files))
        parts.append(ds.map_batches(mine_pages, batch_format="pyarrow",
                                    fn_kwargs={"cfg": cfg, "n_buckets": n_buckets}))
    if user.num_rows:
        parts.append(ray.data.from_arrow(_user_rows(user, cfg.validation_fraction, n_buckets)))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    log.info("dropping duplicate pairs (%d bucket(s)) and writing %s", n_buckets, storage.redact(out.pairs_uri))
    ds = ds.groupby("bucket", num_partitions=n_buckets).map_groups(dedup_bucket, batch_format="pyarrow")
    sink = PairsDatasink(out.pairs_uri, run_id)
    ds.write_datasink(sink)
    totals: dict = {"kept": {split: Counter() for split in SPLITS}, "dropped": Counter(),
                    "files": {split: [] for split in SPLITS}}
    for result in sink.results:
        totals["dropped"] += result["dropped"]
        for split in SPLITS:
            totals["kept"][split] += result["kept"][split]
            totals["files"][split] += result["files"].get(split, [])
    return totals


def _user_rows(user: pa.Table, validation_fraction: float, n_buckets: int) -> pa.Table:
    """The user's pairs as pipeline rows: kind "user", no page, split by a stable hash of the query."""
    queries = user["query"].to_pylist()
    n = len(queries)
    return pair_rows({**{name: user[name].to_pylist() for name in user.column_names}, "kind": ["user"] * n,
                      "page_id": [None] * n, "split": [split_of(q, validation_fraction) for q in queries],
                      "rank": list(range(n))}, n_buckets)


def _manifest(cfg: PairsConfig, pages: PagesInput | None, totals: dict, negatives: dict | None,
              seconds: float) -> dict:
    kinds = list(cfg.kinds if pages else []) + (["user"] if cfg.files else [])
    return {
        "format": FORMAT,
        "bg2vec_version": bg2vec.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "sources": {"data": cfg.data, "files": list(cfg.files), "model": cfg.model},
        "pages": {"read": pages.pages, "with_sections": pages.with_sections} if pages else None,
        "counts": {split: {kind: totals["kept"][split][kind] for kind in kinds} for split in SPLITS},
        "dropped": dict(sorted(totals["dropped"].items())),
        "files": {f"pairs/{split}": sorted(totals["files"][split]) for split in SPLITS},
        "negatives": negatives,
        "config": to_dict(cfg),
    }


def describe_pairs(output: str, manifest: dict) -> str:
    """The lines a finished pairs stage prints: pairs per kind and split, drops by reason, where they are."""
    counts = manifest["counts"]
    lines = [f"pairs {storage.redact(output)}:"]
    for split in SPLITS:
        per_kind = ", ".join(f"{kind} {n}" for kind, n in counts[split].items())
        lines.append(f"  {split}: {sum(counts[split].values())} ({per_kind})")
    lines.append(f"  dropped: {', '.join(f'{r} {n}' for r, n in manifest['dropped'].items()) or 'none'}")
    if manifest["pages"] and not manifest["pages"]["with_sections"]:
        lines.append("  the pages have no sections (prepared by an older bg2vec): title_lead, section and "
                     "lead_body were not mined")
    if manifest["negatives"]:
        lines.append(f"  hard negatives by {storage.redact(manifest['negatives']['model'])}: "
                     f"{manifest['negatives'].get('pairs_with_negatives')}")
    lines.append(f"  manifest: {storage.redact(storage.child(output, 'manifest.json'))}")
    return "\n".join(lines)
