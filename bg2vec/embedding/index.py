"""Search indexes (faiss) over an embedding output's vectors: built after the vectors, resumable, searchable.

``OUTPUT/index/`` holds:

    settings.json        what each file below is built with (written first)
    quantization.json    int8's per-dimension ranges: the min and max of all of the corpus's vectors
    int8.npy, binary.npy the quantized vectors (bg2vec.embedding.quantization), row i = passage i
    float32.faiss, int8.faiss, binary.faiss   one faiss index per precision: flat (exact), HNSW or IVF
    manifest.json        written last: the index is complete; the passages of each vectors/ shard

Passage (and index id) i is row i of the vectors/ shards taken in the embedding manifest's order, so an id
maps back to its Parquet row through the shards' row counts. Every file is written atomically once it is
complete: a rerun after an interruption builds only the files that are missing, one whose settings
changed is rebuilt, and a rerun on a complete index reads nothing. int8 searches the int8 query (quantized
with the saved ranges) against the int8 vectors by inner product (faiss's direct signed 8-bit scalar
quantizer stores the codes as they are); binary by Hamming distance (faiss's binary indexes); either can
rescore its candidates with the float query, as sentence-transformers' ``semantic_search_faiss`` does.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bg2vec.embedding.config import IndexConfig
from bg2vec.embedding.quantization import (
    calibration_ranges,
    dot_dequantized_int8,
    quantize_binary,
    quantize_int8,
    unpack_binary,
)
from bg2vec.errors import Bg2VecError
from bg2vec.storage import child, exists, join, localize, redact, resolve, temporary_sibling, write_bytes_atomic

FORMAT = "bg2vec-index-v1"
FLAT_UP_TO, HNSW_UP_TO = 50_000, 5_000_000  # kind auto: exact search is fast enough below, HNSW's graph above
TRAIN_PER_LIST = 40  # IVF training vectors per list (faiss's k-means warns below 39)
ROW_COLUMNS = ("id", "passage_index", "title", "passage")


def describe(indexes: dict) -> str:
    """"float32 flat, binary hnsw" for a manifest's ``indexes``."""
    return ", ".join(f"{precision} {index['kind']}" for precision, index in indexes.items())


def _faiss():
    try:
        import faiss
    except ImportError:
        raise Bg2VecError("building or searching an index needs faiss: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def resolve_kind(cfg: IndexConfig, passages: int) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    return "flat" if passages <= FLAT_UP_TO else "hnsw" if passages <= HNSW_UP_TO else "ivf"


def ivf_lists(cfg: IndexConfig, passages: int) -> int:
    """IVF's lists: at most one per TRAIN_PER_LIST passages, so that every list has its training vectors."""
    return max(1, min(passages // TRAIN_PER_LIST, cfg.ivf_lists or round(4 * math.sqrt(passages))))


def new_faiss_index(precision: str, kind: str, dimension: int, cfg: IndexConfig, passages: int):
    """An empty faiss index of ``precision`` over ``dimension``-d vectors (binary: dimension in bits,
    a multiple of 8); inner product for float32 and int8."""
    faiss = _faiss()
    lists = ivf_lists(cfg, passages)
    ip = faiss.METRIC_INNER_PRODUCT
    if precision == "binary":
        return {"flat": lambda: faiss.IndexBinaryFlat(dimension),
                "hnsw": lambda: faiss.IndexBinaryHNSW(dimension, cfg.hnsw_m),
                "ivf": lambda: faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dimension), dimension, lists)}[kind]()
    if precision == "int8":
        signed = faiss.ScalarQuantizer.QT_8bit_direct_signed  # stores x + 128 for x in [-128, 127]: the codes
        return {"flat": lambda: faiss.IndexScalarQuantizer(dimension, signed, ip),
                "hnsw": lambda: faiss.IndexHNSWSQ(dimension, signed, cfg.hnsw_m, ip),
                # by_residual=False: the lists hold the codes themselves, not their residuals from a centroid
                "ivf": lambda: faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dimension), dimension, lists, signed,
                                                             ip, False)}[kind]()
    return {"flat": lambda: faiss.IndexFlatIP(dimension),
            "hnsw": lambda: faiss.IndexHNSWFlat(dimension, cfg.hnsw_m, ip),
            "ivf": lambda: faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, lists, ip)}[kind]()


def faiss_input(precision: str, vectors: np.ndarray, ranges: np.ndarray | None) -> np.ndarray:
    """What a faiss index of ``precision`` takes for float vectors (corpus or queries)."""
    if precision == "binary":
        return quantize_binary(vectors)
    if precision == "int8":
        return quantize_int8(vectors, ranges).astype(np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32)


@contextlib.contextmanager
def _local_file(fs: pafs.FileSystem, path: str) -> Iterator[str]:
    """A local file to write ``path`` through (faiss and numpy write local files only), published
    atomically when the block ends without an error: a temporary sibling renamed locally, an upload on
    object stores (an object appears only once complete)."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        staged = temporary_sibling(fs, path)
        try:
            yield staged
            os.replace(staged, path)
        finally:
            if os.path.exists(staged):
                os.remove(staged)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, posixpath.basename(path))
        yield local
        pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def build_index(fs: pafs.FileSystem, root: str, cfg: IndexConfig, shards: list[tuple[str, int]], dimension: int,
                encoder: dict) -> dict | None:
    """Build (or complete) OUTPUT/index/ over the finished vectors/ shards ``[(name, passages)]``; returns its
    manifest, or None (and no index/) without index precisions. ``encoder``: what embedded the passages
    (model, instruction, normalize), saved for the queries."""
    folder = join(root, "index")
    passages = sum(n for _, n in shards)
    kind = resolve_kind(cfg, passages)
    plan = {}  # file -> the settings it is built with
    if "int8" in cfg.precisions:
        plan |= {"quantization.json": {}, "int8.npy": {}}
    if "binary" in cfg.precisions:
        plan["binary.npy"] = {}
    for precision in cfg.precisions:
        plan[f"{precision}.faiss"] = {"kind": kind, **({"hnsw_m": cfg.hnsw_m} if kind == "hnsw" else {}),
                                      **({"ivf_lists": ivf_lists(cfg, passages)} if kind == "ivf" else {})}
    settings_path, manifest_path = join(folder, "settings.json"), join(folder, "manifest.json")
    before = _read_json(fs, settings_path) or {}
    manifest = _read_json(fs, manifest_path)
    if manifest is not None and before == plan:
        return manifest
    if exists(fs, folder):  # drop what is stale, unfinished (temporary files) or no longer wanted
        for info in fs.get_file_info(pafs.FileSelector(folder)):
            name = info.base_name
            if name != "settings.json" and (name not in plan or before.get(name) != plan[name]):
                fs.delete_file(info.path)
    if not plan:
        if exists(fs, folder):
            fs.delete_dir(folder)
        return None
    if before != plan:
        write_bytes_atomic(fs, settings_path, json.dumps(plan, indent=1).encode())
    print(f"indexing {passages} passages (dimension {dimension}) into {redact(folder)}: "
          f"{', '.join(f'{p} {kind}' for p in cfg.precisions)}", flush=True)
    started = time.perf_counter()

    def batches() -> Iterator[np.ndarray]:
        for name, rows in shards:
            if rows:
                column = pq.read_table(join(root, "vectors", name), columns=["vector"], filesystem=fs).column("vector")
                yield column.combine_chunks().flatten().to_numpy().reshape(rows, dimension)

    def done(name: str, what: str, seconds: float) -> None:
        print(f"  index/{name}: {what}, {_size(fs.get_file_info(join(folder, name)).size)} ({seconds:.1f} s)",
              flush=True)

    missing = [name for name in plan if not exists(fs, join(folder, name))]
    # One read of the vectors for what needs all of them first (int8's ranges, IVF's training sample), one
    # more that writes every missing code file and fills every missing index at once.
    ranges = None
    calibrate = "quantization.json" in missing
    train = kind == "ivf" and any(name.endswith(".faiss") for name in missing)
    sample = []
    if calibrate or train:
        stride = max(1, passages // (TRAIN_PER_LIST * ivf_lists(cfg, passages)))  # IVF: TRAIN_PER_LIST per list
        t, seen, partial = time.perf_counter(), 0, []
        for batch in batches():
            if calibrate:
                partial.append(calibration_ranges(batch))
            if train:
                sample.append(batch[(-seen) % stride::stride])
            seen += len(batch)
        if calibrate:
            write_bytes_atomic(fs, join(folder, "quantization.json"), json.dumps({
                "precision": "int8", "buckets": 256, "calibration": f"min and max of all {passages} vectors",
                "ranges": calibration_ranges(np.vstack(partial)).tolist()}).encode())
            done("quantization.json", "int8 ranges per dimension", time.perf_counter() - t)
    if "int8" in cfg.precisions:
        ranges = np.asarray(_read_json(fs, join(folder, "quantization.json"))["ranges"], dtype=np.float32)
    builds = [name for name in missing if name != "quantization.json"]
    if builds:
        t = time.perf_counter()
        bits = 8 * math.ceil(dimension / 8)  # packbits pads with zero bits, equal in every vector
        with contextlib.ExitStack() as files:
            local = {name: files.enter_context(_local_file(fs, join(folder, name))) for name in builds}
            codes, indexes = {}, {}
            for name in builds:
                precision = name.rsplit(".", 1)[0]
                if name.endswith(".npy"):
                    shape = (passages, bits // 8) if precision == "binary" else (passages, dimension)
                    codes[name] = np.lib.format.open_memmap(local[name], mode="w+", shape=shape,
                                                            dtype=np.uint8 if precision == "binary" else np.int8)
                else:
                    index = new_faiss_index(precision, kind, bits if precision == "binary" else dimension, cfg,
                                            passages)
                    if not index.is_trained:
                        index.train(faiss_input(precision, np.concatenate(sample), ranges))
                    indexes[name] = index
            start = 0
            for batch in batches():
                for name, array in codes.items():
                    array[start:start + len(batch)] = (quantize_binary(batch) if name == "binary.npy"
                                                       else quantize_int8(batch, ranges))
                for name, index in indexes.items():
                    index.add(faiss_input(name.rsplit(".", 1)[0], batch, ranges))
                start += len(batch)
            for array in codes.values():
                array.flush()
            codes.clear()  # closes the memory maps before the files are published
            for name, index in indexes.items():
                write = _faiss().write_index_binary if name == "binary.faiss" else _faiss().write_index
                write(index, local[name])
        seconds = time.perf_counter() - t
        for name in builds:
            what = (f"{kind}, {indexes[name].ntotal} vectors" if name in indexes else
                    f"{passages} x {bits // 8 if name == 'binary.npy' else dimension} "
                    f"{'packed bits' if name == 'binary.npy' else 'int8'}")
            done(name, what, seconds)
    offsets = np.cumsum([0] + [n for _, n in shards]).tolist()
    files = {name: fs.get_file_info(join(folder, name)).size for name in plan}
    manifest = {
        "format": FORMAT, "passages": passages, "dimension": dimension, "encoder": encoder,
        "indexes": {p: {"file": f"{p}.faiss", **plan[f"{p}.faiss"]} for p in cfg.precisions},
        "quantization": "quantization.json" if "int8" in cfg.precisions else None,
        "shards": [{"name": name, "passages": n, "offset": offsets[i]} for i, (name, n) in enumerate(shards)],
        "files": files, "bytes": sum(files.values()), "seconds": round(time.perf_counter() - started, 2)}
    write_bytes_atomic(fs, manifest_path, json.dumps(manifest, indent=1).encode())
    return manifest


def find_index(uri: str) -> tuple[pafs.FileSystem, str, str, dict]:
    """(filesystem, the embedding output's path, the index folder's URI, the index manifest) of an embedding
    output or of its index/ folder."""
    fs, path = resolve(uri)
    if not exists(fs, path):
        raise Bg2VecError(f"index {redact(uri)} does not exist; pass index= the output folder of jobs/embed.py "
                          f"(built with index.precisions=[...])")
    index_uri = child(uri, "index")
    if posixpath.basename(path.rstrip("/")) == "index" and exists(fs, join(path, "manifest.json")):
        path, index_uri = posixpath.dirname(path.rstrip("/")), uri
    manifest = _read_json(fs, join(path, "index", "manifest.json"))
    if manifest is None:
        embedded = (_read_json(fs, join(path, "manifest.json")) or {}).get("format") == "bg2vec-embeddings-v1"
        raise Bg2VecError(
            f"{redact(uri)} holds embeddings but no complete index (index/manifest.json): run jobs/embed.py on it "
            f"again with index.precisions=[float32] (or int8, binary); it builds only the index" if embedded else
            f"{redact(uri)} is not an embedding output with an index (no index/manifest.json); pass index= the "
            f"output folder of jobs/embed.py built with index.precisions=[...]")
    if manifest.get("format") != FORMAT:
        raise Bg2VecError(f"{redact(uri)}/index/manifest.json is not a {FORMAT} manifest (format "
                          f"{manifest.get('format')!r}); was it written by a newer bg2vec?")
    return fs, path, index_uri, manifest


class SearchIndex:
    """An embedding output's index, opened for searching: faiss indexes and quantized vectors from index/
    (downloaded once when remote), passages read from vectors/ as they are needed."""

    def __init__(self, uri: str):
        self.fs, self.root, index_uri, self.manifest = find_index(uri)
        self.dimension = self.manifest["dimension"]
        self.local = localize(index_uri)
        self._open: dict = {}
        quantization = self.manifest["quantization"]
        self.ranges = None
        if quantization:
            with open(os.path.join(self.local, quantization), encoding="utf-8") as f:
                self.ranges = np.asarray(json.load(f)["ranges"], dtype=np.float32)
        self._shards = [s for s in self.manifest["shards"] if s["passages"]]
        self._starts = [s["offset"] for s in self._shards]

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest["indexes"])

    def _file(self, name: str):
        if name not in self._open:
            self._open[name] = self._read(name)
        return self._open[name]

    def _read(self, name: str):
        """An index file, or a clear error when it is missing, truncated or not what it claims to be."""
        path = os.path.join(self.local, name)
        size, expected = os.path.getsize(path) if os.path.exists(path) else None, self.manifest["files"].get(name)
        problem = None
        if size is None:
            problem = "is missing"
        elif expected is not None and size != expected:
            problem = f"has {size:,} bytes where the index manifest says {expected:,}"
        else:
            try:
                return (np.load(path, mmap_mode="r") if name.endswith(".npy") else
                        _faiss().read_index_binary(path) if name.startswith("binary") else _faiss().read_index(path))
            except (RuntimeError, ValueError, OSError) as e:  # faiss's read errors are RuntimeErrors
                problem = f"cannot be read ({str(e).strip().splitlines()[-1][:200]})"
        root = redact(self.root)
        raise Bg2VecError(f"index file {root}/index/{name} {problem}: it is damaged or truncated; remove {root}/index "
                          f"and {root}/manifest.json and run jobs/embed.py again with the same settings: it rebuilds "
                          f"only the index (the vectors are kept)")

    def load(self, precision: str, rescore: str = "none") -> None:
        """Read what searching ``precision`` (rescored with ``rescore``) needs, ahead of the first search."""
        if precision not in self.manifest["indexes"]:
            raise Bg2VecError(f"the index has no {precision} vectors (it has {', '.join(self.precisions)}); "
                              f"set precision= to one of them or rebuild with index.precisions=[...]")
        rescore = "none" if precision == "float32" else rescore  # the float vectors are what is searched
        if rescore != "none" and f"{rescore}.npy" not in self.manifest["files"]:
            raise Bg2VecError(f"cannot rescore with {rescore} vectors: the index has none (it has "
                              f"{', '.join(self.precisions)}); set rescore= to one of them, or none")
        self._file(self.manifest["indexes"][precision]["file"])
        if rescore != "none":
            self._file(f"{rescore}.npy")

    def search(self, queries: np.ndarray, top_k: int, precision: str = "float32", rescore: str = "none",
               rescore_multiplier: int = 4, ef_search: int = 128, nprobe: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both [queries, top_k], best first; ids -1 (score -inf) where the corpus has fewer.

        Scores: float32 and rescored searches the dot product with the float query; int8 the int8 dot
        product; binary 1 - 2 x Hamming distance / dimension (the cosine of the +-1 vectors)."""
        self.load(precision, rescore)
        rescore = "none" if precision == "float32" else rescore
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        k = top_k * rescore_multiplier if rescore != "none" else top_k
        index = self._file(self.manifest["indexes"][precision]["file"])
        kind = self.manifest["indexes"][precision]["kind"]
        if kind == "hnsw":
            index.hnsw.efSearch = max(ef_search, k)
        elif kind == "ivf":
            index.nprobe = nprobe
        scores, ids = index.search(faiss_input(precision, queries, self.ranges), k)
        scores = scores.astype(np.float64)
        if precision == "binary":
            scores = 1 - 2 * scores / self.dimension
        scores[ids < 0] = -np.inf
        if rescore != "none":
            codes = self._file(f"{rescore}.npy")[np.maximum(ids, 0)]
            if rescore == "int8":
                scores = dot_dequantized_int8(queries, codes, self.ranges)
            else:
                bits = unpack_binary(codes, self.dimension).astype(np.float64)
                scores = np.matmul(bits, queries.astype(np.float64)[:, :, None])[..., 0]
            scores[ids < 0] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        return scores, ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The float32 vectors of passages ``ids`` (any shape, no -1), ``[*ids.shape, dimension]``, read back
        from the float32 index (its flat and HNSW kinds store them as they are)."""
        ids = np.asarray(ids, dtype=np.int64)
        self.load("float32")
        index = self._file(self.manifest["indexes"]["float32"]["file"])
        return index.reconstruct_batch(ids.reshape(-1)).reshape(*ids.shape, self.dimension)

    def passages(self, ids: list[int]) -> list[dict]:
        """The Parquet rows (id, passage_index, title when embedded with one, passage) of passages ``ids``."""
        wanted: dict[int, list[int]] = {}
        for i in set(ids):
            if not 0 <= i < self.manifest["passages"]:
                raise Bg2VecError(f"passage {i} is not in the index ({self.manifest['passages']} passages)")
            wanted.setdefault(bisect.bisect_right(self._starts, i) - 1, []).append(i)
        rows = {}
        for s, members in wanted.items():
            shard = self._shards[s]
            with self.fs.open_input_file(join(self.root, "vectors", shard["name"])) as handle:
                file = pq.ParquetFile(handle)
                columns = [c for c in ROW_COLUMNS if c in file.schema_arrow.names]
                group_starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows
                                                for g in range(file.metadata.num_row_groups)]).tolist()
                groups = sorted({bisect.bisect_right(group_starts, i - shard["offset"]) - 1 for i in members})
                table = file.read_row_groups(groups, columns=columns)  # only the groups holding a hit
            base = dict(zip(groups, np.cumsum([0] + [group_starts[g + 1] - group_starts[g] for g in groups]).tolist()))
            for i in members:
                row = i - shard["offset"]
                g = bisect.bisect_right(group_starts, row) - 1
                rows[i] = table.slice(base[g] + row - group_starts[g], 1).to_pylist()[0]
        return [rows[i] for i in ids]
