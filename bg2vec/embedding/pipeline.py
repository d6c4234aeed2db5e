"""The embedding pipeline: a corpus's shards -> passages -> vectors (an actor pool) -> one Parquet file per shard.

Ray Data reads the shards (one input file each) in order, cuts documents into passages in tasks and
encodes them on a pool of actors that each load the model once. The driver receives the passages in
input order (``preserve_order``), so a shard is complete when the next one's first passage arrives;
it is then written atomically as ``vectors/<shard>.parquet``. A run that stops midway resumes by
skipping every shard whose file exists. Once every shard is there, the search indexes are built
(bg2vec.embedding.index, resumable too); ``manifest.json``, written last, marks the output complete.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bg2vec.config import to_dict
from bg2vec.embedding.config import EmbedConfig
from bg2vec.embedding.index import build_index
from bg2vec.errors import Bg2VecError
from bg2vec.storage import check_apart, exists, join, redact, resolve, write_bytes_atomic

FORMAT = "bg2vec-embeddings-v1"
SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
OUTPUT_COLUMNS = ["id", "passage_index", "title", "passage", "char_start", "char_end", "vector"]  # title: if any
ROW_GROUP = 1024  # passages per Parquet row group: a search reads only the groups that hold its hits


@dataclass(frozen=True)
class Shard:
    path: str
    """Path inside the input filesystem (what Ray Data's include_paths reports)."""
    name: str
    """Output file name under vectors/."""


def find_shards(input_uri: str) -> tuple[pafs.FileSystem, list[Shard], str]:
    """(filesystem, shards in order, format) of a file, a folder of files, or a prepared data directory."""
    fs, path = resolve(input_uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise Bg2VecError(f"input {redact(input_uri)} does not exist")
    if info.type == pafs.FileType.File:
        files, base = [info], path[:-len(info.base_name)]
    else:
        if exists(fs, join(path, "manifest.json")) and exists(fs, join(path, "pages")):
            path = join(path, "pages")  # a prepared data directory: its clean pages
        files = sorted((f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                        if f.type == pafs.FileType.File and f.extension and f".{f.extension}" in SUFFIXES),
                       key=lambda f: f.path)
        base = path
    formats = {SUFFIXES[f".{f.extension}"] for f in files}
    if not files:
        raise Bg2VecError(f"input {redact(input_uri)} holds no .parquet, .jsonl or .json files")
    if len(formats) > 1:
        raise Bg2VecError(f"input {redact(input_uri)} mixes Parquet and JSON files; point input= at one kind")
    shards = []
    for f in files:
        relative = f.path[len(base):].lstrip("/")
        stem = relative.rsplit(".", 1)[0].replace("/", "__")
        shards.append(Shard(f.path, f"{stem}.parquet"))
    return fs, shards, formats.pop()


def input_columns(fs: pafs.FileSystem, shard: Shard, fmt: str) -> list[str]:
    """The columns of the first shard (Parquet schema, or the first JSON line's keys)."""
    if fmt == "parquet":
        return pq.read_schema(shard.path, filesystem=fs).names
    with fs.open_input_stream(shard.path) as stream:
        first = io.TextIOWrapper(stream, encoding="utf-8").readline()
    try:
        return list(json.loads(first)) if first.strip() else []
    except (json.JSONDecodeError, TypeError):
        raise Bg2VecError(f"{shard.path} is not JSON Lines (its first line does not parse as an object)") from None


class OutputDir:
    """The output directory: its settings file, the finished shards, the manifest."""

    def __init__(self, cfg: EmbedConfig):
        self.cfg = cfg
        self.fs, self.path = resolve(cfg.output)
        self.settings_path = join(self.path, "embed_config.json")
        self.manifest_path = join(self.path, "manifest.json")

    def vectors(self, shard: Shard) -> str:
        return join(self.path, "vectors", shard.name)

    def _read(self, path: str) -> dict | None:
        if not exists(self.fs, path):
            return None
        with self.fs.open_input_stream(path) as stream:
            return json.loads(stream.read())

    def open(self) -> dict | None:
        """Prepare for a run; returns the manifest when the output is already complete with these settings."""
        wanted = self.cfg.content_key()
        if self.cfg.overwrite and exists(self.fs, self.path):
            self.fs.delete_dir_contents(self.path, missing_dir_ok=True)
        manifest = self._read(self.manifest_path)
        settings = manifest["settings"] if manifest else self._read(self.settings_path)
        if settings is not None and settings != wanted:
            changed = sorted(k for k in wanted if settings.get(k) != wanted[k])
            raise Bg2VecError(f"output {redact(self.cfg.output)} holds embeddings made with other settings "
                              f"({', '.join(changed)}); choose another output= or pass overwrite=true")
        if manifest is not None:
            return manifest
        if settings is None:
            if exists(self.fs, self.path) and self.fs.get_file_info(pafs.FileSelector(self.path)):
                raise Bg2VecError(f"output {redact(self.cfg.output)} is not empty and is not an embedding output; "
                                  f"choose another output= or pass overwrite=true")
            write_bytes_atomic(self.fs, self.settings_path, json.dumps(wanted, indent=1).encode())
        return None

    def write_shard(self, shard: Shard, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table.select([c for c in OUTPUT_COLUMNS if c in table.column_names]), sink,
                       row_group_size=ROW_GROUP)
        write_bytes_atomic(self.fs, self.vectors(shard), sink.getvalue().to_pybytes())

    def finished(self, shard: Shard) -> tuple[int, int] | None:
        """(passages, dimension) of a shard written earlier, or None."""
        path = self.vectors(shard)
        if not exists(self.fs, path):
            return None
        metadata = pq.read_metadata(path, filesystem=self.fs)
        return metadata.num_rows, metadata.schema.to_arrow_schema().field("vector").type.list_size

    def write_manifest(self, manifest: dict) -> None:
        write_bytes_atomic(self.fs, self.manifest_path, json.dumps(manifest, indent=1).encode())


def check_model(cfg: EmbedConfig) -> str:
    """Where the workers find the model (an absolute path when local), after checking that passages
    fit the encoder's max_length (longer ones would be truncated without a word)."""
    from bg2vec.embedding.passages import encoder_tokenizer
    from bg2vec.modeling.encoder import CONFIG_NAME, EncoderConfig

    fs, path = resolve(cfg.model)
    found = exists(fs, path)
    if not found and ("://" in cfg.model or cfg.model.startswith((".", "/", "~")) or cfg.model.count("/") > 1):
        raise Bg2VecError(f"model {redact(cfg.model)} does not exist (a trained bg2vec directory or a base LLM)")
    location = (path if "://" not in cfg.model else cfg.model) if found else cfg.model  # else a hub id
    max_length = EncoderConfig.__dataclass_fields__["max_length"].default
    if found and exists(fs, join(path, CONFIG_NAME)):
        with fs.open_input_stream(join(path, CONFIG_NAME)) as stream:
            max_length = json.loads(stream.read())["max_length"]
    try:
        tokenizer = encoder_tokenizer(location)
    except OSError as e:
        raise Bg2VecError(f"cannot load the tokenizer of model {redact(cfg.model)}: {e}") from None
    extra = 2 + (len(tokenizer(cfg.instruction, add_special_tokens=False)["input_ids"]) if cfg.instruction else 0)
    if not cfg.whole_documents and cfg.passage_tokens + extra > max_length:
        raise Bg2VecError(f"passage_tokens={cfg.passage_tokens} plus {extra} special/instruction tokens exceeds the "
                          f"encoder's max_length={max_length}: passages would be truncated; lower passage_tokens")
    return location


def embed(cfg: EmbedConfig) -> dict:
    """Embed cfg.input into cfg.output; returns the manifest (with ``skipped``: shards done earlier)."""
    check_apart(cfg.output, {"model": cfg.model, "input": cfg.input})
    input_fs, shards, fmt = find_shards(cfg.input)
    columns = input_columns(input_fs, shards[0], fmt)
    if cfg.text_column not in columns:
        raise Bg2VecError(f"input {redact(cfg.input)} has no column {cfg.text_column!r} (columns: "
                          f"{', '.join(columns)}); set text_column=")
    id_column = cfg.id_column if cfg.id_column in columns else None
    title_column = cfg.title_column if cfg.title_column in columns else None
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise Bg2VecError(f"input {redact(cfg.input)} has files that map to the same output name; rename them")
    model = check_model(cfg)
    out = OutputDir(cfg)
    manifest = out.open()
    if manifest is not None:
        if manifest.get("index_config") == to_dict(cfg.index):
            return {**manifest, "skipped": len(shards), "already_complete": True}
        out.fs.delete_file(out.manifest_path)  # other index settings: complete again once the index is rebuilt
    done = {s: out.finished(s) for s in shards}
    todo = [s for s in shards if done[s] is None]
    print(f"embedding {redact(cfg.input)}: {len(shards)} shard(s), {len(shards) - len(todo)} finished earlier, "
          f"{len(todo)} to do", flush=True)
    started = time.perf_counter()
    counts = {"passages": 0, "tokens": 0}
    if todo:
        counts = _run(cfg, model, input_fs, todo, fmt, id_column, title_column, out, done)
    seconds = time.perf_counter() - started
    dimension = next((d for n, d in done.values() if n), 0)
    index = build_index(out.fs, out.path, cfg.index, [(s.name, done[s][0]) for s in shards], dimension, encoder={
        "model": redact(model), "instruction": cfg.instruction, "normalize": cfg.normalize})
    manifest = {
        "format": FORMAT, "settings": cfg.content_key(), "model": redact(cfg.model), "dimension": dimension,
        "id_column": id_column, "title_column": title_column,
        "shards": [{"name": s.name, "source": s.path, "passages": done[s][0]} for s in shards],
        "passages": sum(n for n, _ in done.values()), "index_config": to_dict(cfg.index),
        "index": index and {k: index[k] for k in ("indexes", "files", "bytes", "seconds")},
        "this_run": {**counts, "shards": len(todo), "seconds": round(seconds, 2),
                     "passages_per_s": round(counts["passages"] / seconds, 2) if seconds else 0.0,
                     "tokens_per_s": round(counts["tokens"] / seconds, 2) if seconds else 0.0}}
    out.write_manifest(manifest)
    return {**manifest, "skipped": len(shards) - len(todo), "already_complete": False}


def _run(cfg: EmbedConfig, model: str, input_fs: pafs.FileSystem, todo: list[Shard], fmt: str,
         id_column: str | None, title_column: str | None, out: OutputDir, done: dict) -> dict:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from bg2vec.embedding.encoder_actor import PassageEncoder
    from bg2vec.embedding.passages import split_passages
    from bg2vec.errors import reraise_user_error
    from bg2vec.ray_session import init_ray, map_with_actor_pool

    init_ray(cfg.ray_address)
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # a shard is complete when the next one starts
    context.enable_progress_bars = cfg.progress
    gpus = ray.cluster_resources().get("GPU", 0)
    gpus_per_actor = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1 if gpus else 0)
    actors = cfg.actors or (max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1)
    columns = [cfg.text_column] + [c for c in (id_column, title_column) if c]
    paths = [s.path for s in todo]
    if fmt == "parquet":
        ds = ray.data.read_parquet(paths, filesystem=input_fs, include_paths=True).select_columns([*columns, "path"])
    else:
        ds = ray.data.read_json(paths, filesystem=input_fs, include_paths=True)  # pyarrow reads JSON Lines
    ds = ds.map_batches(split_passages, batch_format="numpy", fn_kwargs=dict(
        model=model, text_column=cfg.text_column, id_column=id_column, title_column=title_column,
        passage_tokens=cfg.passage_tokens, overlap_tokens=cfg.overlap_tokens, whole_documents=cfg.whole_documents))
    ds = map_with_actor_pool(ds, PassageEncoder, batch_format="pyarrow", batch_size=cfg.batch_size * 4,
                             fn_constructor_kwargs=dict(model=model, batch_size=cfg.batch_size,
                                                        instruction=cfg.instruction, normalize=cfg.normalize,
                                                        dtype=cfg.dtype),
                             compute=ActorPoolStrategy(min_size=1, max_size=actors), num_gpus=gpus_per_actor,
                             num_cpus=cfg.cpus_per_actor)
    position = {s.path: i for i, s in enumerate(todo)}
    current, pieces, empty, counts = 0, [], [], {"passages": 0, "tokens": 0}
    started = time.perf_counter()

    def close(upto: int) -> None:
        """Write the current shard; shards without passages wait for the end (their schema needs a vector size)."""
        nonlocal current, pieces
        while current < upto:
            shard = todo[current]
            if pieces:
                table = pa.concat_tables(pieces)
                out.write_shard(shard, table)
                done[shard] = (table.num_rows, table.schema.field("vector").type.list_size)
                rate = counts["passages"] / (time.perf_counter() - started)
                print(f"  shard {current + 1}/{len(todo)} {shard.name}: {table.num_rows} passages "
                      f"({counts['passages']} so far, {rate:.1f} passages/s)", flush=True)
            else:
                empty.append(shard)
            current, pieces = current + 1, []

    with reraise_user_error():
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            counts["passages"] += batch.num_rows
            counts["tokens"] += pc.sum(batch.column("tokens")).as_py() or 0
            order = [position[p] for p in batch.column("path").to_pylist()]
            start = 0
            for end in range(1, len(order) + 1):
                if end == len(order) or order[end] != order[start]:
                    if order[start] < current:
                        raise Bg2VecError(f"passages of {todo[order[start]].path} arrived after its shard was "
                                          f"written; the input order was not preserved")
                    close(order[start])
                    pieces.append(batch.slice(start, end - start))
                    start = end
    close(len(todo))
    written = next((s for s in done if done[s] and done[s][0]), None)
    if written is None:
        raise Bg2VecError(f"input {redact(cfg.input)} has no text to embed in column {cfg.text_column!r}")
    schema = pq.read_schema(out.vectors(written), filesystem=out.fs)
    for shard in empty:
        out.write_shard(shard, schema.empty_table())
        done[shard] = (0, schema.field("vector").type.list_size)
    return counts
