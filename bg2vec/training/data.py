"""Training data: Ray Datasets built on the driver, batches built on the workers.

MNTP trains on the prepared token blocks (``blocks/{train,validation}``). SimCSE trains on texts
from the prepared pages (``pages/``): by default every paragraph of at least ``min_chars``
characters, each truncated to ``max_length`` tokens. The reference run used whole articles cut to
128 tokens, which only ever shows the model an article's first lines; paragraphs cover all of
each article and give many more distinct training texts (``text_unit=article`` restores the
reference behaviour).

Reading Parquet and splitting paragraphs is light work, so those tasks reserve no CPUs: on a
machine whose CPUs all belong to training workers (or to concurrent Tune trials) the data still
flows. The files are the ones the manifest names, read by ``ParquetFilesDatasource``:
``read_parquet`` would list them in a task that always asks for a whole CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from bg2vec.errors import Bg2VecError
from bg2vec.modeling.inputs import build_sequences, collate
from bg2vec.storage import child, redact, resolve

_LIGHT = {"num_cpus": 0}
IN_MEMORY_BYTES = 256 * 2**20


def block_datasets(data: str, manifest: dict, seed: int, materialize: bool) -> dict:
    datasets = {split: _read(data, manifest, f"blocks/{split}", ["input_ids"]).randomize_block_order(seed=seed)
                for split in ("train", "validation")}
    return _small_in_memory(datasets, materialize)


def text_datasets(data: str, manifest: dict, seed: int, unit: str, min_chars: int, materialize: bool) -> dict:
    pages = _read(data, manifest, "pages", ["text", "split"])
    datasets = {split: pages.map_batches(training_texts, fn_kwargs=dict(split=split, unit=unit, min_chars=min_chars),
                                         batch_format="numpy", **_LIGHT).randomize_block_order(seed=seed)
                for split in ("train", "validation")}
    return _small_in_memory(datasets, materialize)


def _read(data: str, manifest: dict, folder: str, columns: list[str]):
    import ray.data

    from bg2vec.data.parquet_source import ParquetFilesDatasource

    files = [child(data, *folder.split("/"), name) for name in manifest["files"][folder]]
    return ray.data.read_datasource(ParquetFilesDatasource(files, columns), override_num_blocks=len(files), **_LIGHT)


def dev_dataset(data: str, manifest: dict, limit: int, workers: int):
    """The dev score's blocks (bg2vec.training.dev_score): the first ``limit`` validation blocks in
    the manifest's file order, so every run and every trial scores the same ones. Numbered, so that
    each worker can take its own equal share (all ranks run the same number of forward passes, as
    ZeRO-3 requires) whatever order the rows arrive in."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    tables, rows = [], 0
    for name in manifest["files"]["blocks/validation"]:
        if rows >= limit:
            break
        fs, path = resolve(child(data, "blocks", "validation", name))
        tables.append(pq.read_table(path, filesystem=fs, columns=["input_ids"]))
        rows += tables[-1].num_rows
    usable = min(rows, limit) // workers * workers
    if usable < 2:
        raise Bg2VecError(f"data={redact(data)} has {rows} validation block(s); the dev score needs at least "
                          f"max(2, scaling.num_workers={workers}): prepare the data with a larger "
                          f"validation_fraction, or set run.dev_blocks=0")
    table = pa.concat_tables(tables).slice(0, usable)
    return ray.data.from_arrow(table.append_column("index", pa.array(np.arange(usable, dtype=np.int64))))


def _small_in_memory(datasets: dict, materialize: bool) -> dict:
    """Small datasets are read once into the object store instead of once per epoch (re-reading
    dominates the epochs of a small corpus); large ones stream."""
    return {split: ds.materialize() if materialize else ds for split, ds in datasets.items()}


def fits_in_memory(manifest: dict, stage: str) -> bool:
    """Whether the stage's data is under IN_MEMORY_BYTES (estimated from the prepared manifest)."""
    counts = manifest["counts"]
    if stage == "mntp":
        size = 4 * sum(counts["blocks"].values()) * manifest["seq_len"]  # int32 tokens
    else:
        size = 2 * counts.get("text_chars", float("inf"))  # UTF-8 Cyrillic: 2 bytes a character
    return size < IN_MEMORY_BYTES


def training_texts(batch: dict[str, np.ndarray], split: str, unit: str, min_chars: int) -> dict[str, np.ndarray]:
    """Pages of one split -> training texts: paragraphs (lines) of >= min_chars, or whole articles."""
    texts = []
    for text, page_split in zip(batch["text"], batch["split"]):
        if page_split != split:
            continue
        if unit == "article":
            texts.append(text)
        else:
            texts += [line.strip() for line in text.split("\n") if len(line.strip()) >= min_chars]
    return {"text": np.array(texts, dtype=object)}


class TextCollator(NumpyBatchCollateFn):
    """A numpy batch of texts -> the encoder's own input tensors (the same as ``Bg2Vec.encode``)."""

    def __init__(self, tokenizer, max_length: int, pooling: str):
        self.tokenizer, self.max_length, self.add_eos = tokenizer, max_length, pooling == "last"
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        sequences = build_sequences(self.tokenizer, [str(t) for t in batch["text"]], instruction=None,
                                    max_length=self.max_length, add_bos=True, add_eos=self.add_eos)
        return collate(sequences, self.pad_id)


class BlocksCollator(NumpyBatchCollateFn):
    """A numpy batch of equal-length token blocks -> input_ids [B, L] (int64)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(np.stack(batch["input_ids"]).astype(np.int64))}
