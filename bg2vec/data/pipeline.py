"""The prepare stage on Ray Data: dump -> pages/ -> (tokenizer/) -> blocks/ -> manifest.json.

Stages (each one parallel across the cluster):

1. read: :class:`WikipediaDumpDatasource`, one task per byte range of whole pages (pinned to the
   driver's node when the dump is a local file);
2. clean: :func:`clean_pages`;
3. write pages: :class:`PagesDatasink` (kept pages; every page counted by skip reason);
4. tokenise: :func:`tokenize_docs` tasks, each worker process keeping the tokenizer it built;
5. pack + write blocks: :class:`BlocksDatasink`.

When the dump has enough ranges to keep every CPU busy (``FUSE_RANGES_PER_CPU``), Ray Data fuses
each pass into one task per unit: a task reads, cleans and writes one range (one pages file),
then a task reads, tokenises, packs and writes one pages file. Nothing is handed between
operators, and no task waits for a worker process to start (a separate zero-CPU write needs a
worker of its own while the others clean: on a 2-core node those start-ups alone idled a CPU
for ~5 s of a 20 s pass). With fewer ranges (a single-stream dump) cleaning and tokenising run
as separate tasks over batches of pages, so that every CPU still works, and the writes collect
at least 1,000 pages or documents per file; those writes (and re-reading the pages) declare no
CPU, as they are light.

``manifest.json`` is written last and atomically; on any failure the partial output is removed.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
import uuid
from collections import Counter

import ray
from ray.data import DataContext
from ray.data.expressions import col

import bg2vec
from bg2vec import storage
from bg2vec.config import to_dict
from bg2vec.data.config import PrepareConfig
from bg2vec.data.dumps.dump_datasource import WikipediaDumpDatasource
from bg2vec.data.dumps.dump_ranges import plan_ranges, read_multistream_index
from bg2vec.data.dumps.dump_reader import read_siteinfo
from bg2vec.data.dumps.sources import resolve_dump
from bg2vec.data.output_dir import PreparedDir, read_manifest
from bg2vec.data.parquet_source import ParquetFilesDatasource
from bg2vec.data.sinks import DOCS_MIN_ROWS_PER_SHARD, PAGES_MIN_ROWS_PER_FILE, SPLITS, BlocksDatasink, PagesDatasink
from bg2vec.data.stages import clean_pages, tokenize_docs
from bg2vec.data.tokens.tokenization import load_tokenizer, train_bpe_tokenizer
from bg2vec.errors import DumpError, reraise_user_error
from bg2vec.ray_session import init_ray

log = logging.getLogger(__name__)

CLEAN_BATCH_PAGES = 32
TOKENIZE_BATCH_DOCS = 64
# Ranges (then pages files) per CPU from which each pass runs fused, one task per range or file (see
# the module docstring): with fewer, a CPU would idle at the end of the pass.
FUSE_RANGES_PER_CPU = 2
BLOCK_BYTES = 4 << 20


def prepare(cfg: PrepareConfig) -> dict:
    """Run the whole stage; return the manifest (also written to ``output/manifest.json``).

    Everything that can be checked cheaply (output, tokenizer, dump format, index) is checked
    before the output is touched and before any cluster work starts.
    """
    started = time.time()
    storage.check_apart(cfg.output, {"dump": cfg.dump, "tokenizer.name_or_path": cfg.tokenizer.name_or_path})
    out = PreparedDir(cfg.output)
    out.check_free(overwrite=cfg.overwrite)
    tc = cfg.tokenizer
    given = load_tokenizer(tc.name_or_path, tc.revision, tc.trust_remote_code) if tc.name_or_path else None
    source = resolve_dump(cfg)
    siteinfo, ranges = _plan_reading(cfg, source)
    out.claim()
    init_ray(cfg.ray_address)
    workers = cfg.max_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    run_id = uuid.uuid4().hex[:8]
    try:
        with reraise_user_error(), _small_blocks():
            pages = _write_pages(cfg, source, siteinfo, ranges, out, run_id, workers)
            kept = sum(pages["kept"].values())
            log.info("pages: %d kept, %d skipped -> %s", kept, sum(pages["skipped"].values()),
                     storage.redact(out.pages_uri))
            if not kept:
                raise DumpError(f"dump {source.display}: no article was kept (skipped: "
                                f"{dict(pages['skipped']) or 'none'}); is it a pages-articles dump?")
            page_files = [storage.child(out.pages_uri, name) for name in pages["files"]]
            if given:
                tokenizer, tokenizer_info = given, {"name_or_path": tc.name_or_path, "revision": tc.revision,
                                                    "trained": False}
            else:
                tokenizer, tokenizer_info = _train_tokenizer(cfg, out, page_files)
            blocks = _write_blocks(cfg, tokenizer, out, page_files, run_id, workers)
        manifest = _manifest(cfg, source, siteinfo, len(ranges), pages, blocks, tokenizer_info,
                             time.time() - started)
        out.write_manifest(manifest)
    except BaseException:
        out.discard()
        raise
    return manifest


def _plan_reading(cfg: PrepareConfig, source) -> tuple:
    """The dump's siteinfo (rejecting what is not a dump) and its byte ranges of whole pages."""
    fs, path = storage.resolve(source.uri)
    siteinfo = read_siteinfo(fs, path, source.codec, source.display)
    offsets = None
    if source.index_uri:
        offsets = read_multistream_index(*storage.resolve(source.index_uri), source.index_uri)
    ranges = plan_ranges(fs, path, source.codec, source.size, int(cfg.range_mb * 2**20), offsets, source.display)
    log.info("dump %s: %s, %.1f MB, wiki %s (%s), %d read range(s)", source.display, source.codec,
             source.size / 1e6, siteinfo.dbname, siteinfo.lang, len(ranges))
    return siteinfo, ranges


@contextlib.contextmanager
def _small_blocks():
    """Blocks of a few MB: Ray Data's default (128 MB) merges a whole read range into one block,
    which one task then cleans or tokenises alone while the other CPUs wait. (Scoped, so that the
    caller's DataContext is left as it was.)"""
    ctx = DataContext.get_current()
    saved, ctx.target_max_block_size = ctx.target_max_block_size, BLOCK_BYTES
    try:
        yield
    finally:
        ctx.target_max_block_size = saved


def _write_pages(cfg: PrepareConfig, source, siteinfo, ranges, out: PreparedDir, run_id: str,
                 workers: int) -> dict:
    # A local dump exists on this node only: read it here (cleaning still spreads over the cluster).
    pin = {"resources": {f"node:{ray.util.get_node_ip_address()}": 0.001}} if source.is_local else {}
    datasource = WikipediaDumpDatasource(source.uri, source.codec, ranges, siteinfo.root_tag,
                                         source.display, cfg.salvage)
    ds = ray.data.read_datasource(datasource, **pin, override_num_blocks=len(ranges))
    fuse = _fuses(cfg, len(ranges), workers)
    log.info("reading, cleaning and writing pages: %s", "one task per range" if fuse else
             f"cleaning in tasks of {CLEAN_BATCH_PAGES} pages, files of {PAGES_MIN_ROWS_PER_FILE:,}+ pages")
    ds = ds.map_batches(clean_pages, batch_size=None if fuse else CLEAN_BATCH_PAGES, **(pin if fuse else {}),
                        concurrency=cfg.max_workers, batch_format="pyarrow",
                        fn_kwargs={"cleaning": cfg.cleaning, "namespaces": siteinfo.namespaces,
                                   "validation_fraction": cfg.validation_fraction})
    sink = PagesDatasink(out.pages_uri, run_id, min_rows=None if fuse else PAGES_MIN_ROWS_PER_FILE)
    ds.write_datasink(sink, ray_remote_args=pin if fuse else {"num_cpus": 0})
    totals: dict = {"kept": Counter(), "skipped": Counter(), "chars": 0, "truncations": [], "files": []}
    for result in sink.results:
        for key in totals:
            totals[key] += result[key]
    return totals


def _fuses(cfg: PrepareConfig, units: int, workers: int) -> bool:
    """Whether a pass over ``units`` ranges or pages files runs fused, one task per unit (module
    docstring). Ray Data fuses operators that take whole blocks (batch_size=None, no minimum rows
    per write) with the read's remote args and concurrency; ray 2.60 fuses no read given a
    concurrency, so ``max_workers``, which caps the tasks, keeps them apart."""
    return cfg.max_workers is None and units >= FUSE_RANGES_PER_CPU * workers


def _train_tokenizer(cfg: PrepareConfig, out: PreparedDir, page_files: list[str]):
    tc = cfg.tokenizer
    log.info("training a %d-token byte-level BPE tokenizer on the training pages", tc.train_vocab_size)
    ds = ray.data.read_datasource(ParquetFilesDatasource(page_files, ["id", "title", "text", "split"]))
    ds = ds.filter(expr=col("split") == "train").sort("id")  # same pages, same order: same tokenizer

    def texts():
        for batch in ds.iter_batches(batch_size=256, batch_format="pyarrow"):
            if tc.include_title:
                yield from (f"{t}\n\n{x}" for t, x in zip(batch["title"].to_pylist(), batch["text"].to_pylist()))
            else:
                yield from batch["text"].to_pylist()

    tok = train_bpe_tokenizer(texts(), tc.train_vocab_size)
    out.save_tokenizer(tok)
    return tok, {"name_or_path": "tokenizer", "trained": True, "vocab_size": tc.train_vocab_size}


def _write_blocks(cfg: PrepareConfig, tokenizer, out: PreparedDir, page_files: list[str], run_id: str,
                  workers: int) -> dict:
    tc = cfg.tokenizer
    bos = tokenizer.bos_token_id if tc.add_bos else None
    eos = tokenizer.eos_token_id if tc.add_eos else None
    fuse = _fuses(cfg, len(page_files), workers)
    log.info("tokenising, packing and writing blocks: %s", "one task per pages file" if fuse else
             f"tokenising in tasks of {TOKENIZE_BATCH_DOCS} documents, shards of {DOCS_MIN_ROWS_PER_SHARD:,}+")
    io_only = {} if fuse else {"num_cpus": 0}  # apart, reading and writing are light
    ds = ray.data.read_datasource(ParquetFilesDatasource(page_files, ["title", "text", "split"]), **io_only,
                                  override_num_blocks=len(page_files))
    ds = ds.map_batches(tokenize_docs, batch_size=None if fuse else TOKENIZE_BATCH_DOCS, concurrency=cfg.max_workers,
                        batch_format="pyarrow",
                        fn_kwargs={"tokenizer_json": tokenizer.backend_tokenizer.to_str(), "bos": bos, "eos": eos,
                                   "include_title": tc.include_title})
    sink = BlocksDatasink(out.blocks_uri, run_id, cfg.seq_len, min_rows=None if fuse else DOCS_MIN_ROWS_PER_SHARD)
    ds.write_datasink(sink, ray_remote_args=io_only)
    totals = {split: {"docs": 0, "tokens": 0, "blocks": 0, "dropped_tokens": 0, "files": []}
              for split in SPLITS}
    for result in sink.results:
        for split in SPLITS:
            for key, value in result[split].items():
                totals[split][key] += value
    totals["special_tokens"] = {"bos": bos, "eos": eos}
    return totals


def _manifest(cfg: PrepareConfig, source, siteinfo, n_ranges: int, pages: dict, blocks: dict,
              tokenizer_info: dict, seconds: float) -> dict:
    kept, skipped = pages["kept"], pages["skipped"]
    truncations = pages["truncations"]
    return {
        "format": "bg2vec-prepared-v1",
        "bg2vec_version": bg2vec.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "source": {**source.to_json(), "siteinfo": siteinfo.to_json(), "read_ranges": n_ranges},
        "tokenizer": tokenizer_info,
        "seq_len": cfg.seq_len,
        "counts": {
            "pages_read": sum(kept.values()) + sum(skipped.values()),
            "pages_kept": sum(kept.values()),
            "pages_kept_by_split": {s: kept.get(s, 0) for s in SPLITS},
            "pages_skipped": dict(sorted(skipped.items())),
            "text_chars": pages["chars"],
            "tokens": {s: blocks[s]["tokens"] for s in SPLITS},
            "blocks": {s: blocks[s]["blocks"] for s in SPLITS},
            "dropped_tokens": {s: blocks[s]["dropped_tokens"] for s in SPLITS},
            "documents_tokenized": {s: blocks[s]["docs"] for s in SPLITS},
        },
        "salvage": {
            "ranges_cut_short": len(truncations),
            "bytes_lost": sum(t["lost_bytes"] for t in truncations),
            "partial_pages_lost": sum(1 for t in truncations if t["title"]),
            "problems": [t["problem"] for t in truncations],
        } if truncations else None,
        "special_tokens": blocks["special_tokens"],
        "files": {"pages": sorted(pages["files"]),
                  **{f"blocks/{s}": sorted(blocks[s]["files"]) for s in SPLITS}},
        "config": to_dict(cfg),
    }


def describe_prepared(output: str, manifest: dict) -> str:
    """The lines a finished prepare stage prints: what it kept and made, and where."""
    c = manifest["counts"]
    lines = [f"prepared {storage.redact(output)}:",
             f"  pages: {c['pages_read']} read, {c['pages_kept']} kept "
             f"({c['pages_kept_by_split']['train']} train / {c['pages_kept_by_split']['validation']} validation), "
             f"skipped {c['pages_skipped']}",
             f"  blocks of {manifest['seq_len']} tokens: {c['blocks']}, tokens {c['tokens']}, "
             f"dropped at shard ends {c['dropped_tokens']}"]
    if manifest["salvage"]:
        s = manifest["salvage"]
        lines.append(f"  salvage: {s['ranges_cut_short']} range(s) cut short, about {s['bytes_lost']:,} bytes "
                     f"and {s['partial_pages_lost']} partial page(s) lost: {'; '.join(s['problems'])}")
    lines.append(f"  manifest: {storage.redact(storage.child(output, 'manifest.json'))}")
    return "\n".join(lines)


def load_manifest(directory: str) -> dict:
    """The manifest of a prepared directory; a clear error if it is missing (incomplete run)."""
    return read_manifest(directory, "data", "prepared data directory", "jobs/prepare_data.py")
