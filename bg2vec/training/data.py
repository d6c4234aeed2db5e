"""Training data: Ray Datasets built on the driver, batches built on the workers.

MNTP trains on the prepared token blocks (``blocks/{train,validation}``). SimCSE trains on texts
from the prepared pages (``pages/``): by default every paragraph of at least ``min_chars``
characters, each truncated to ``max_length`` tokens. The reference run used whole articles cut to
128 tokens, which only ever shows the model an article's first lines; paragraphs cover all of
each article and give many more distinct training texts (``text_unit=article`` restores the
reference behaviour). The contrastive stage trains on a pairs directory (``jobs/pairs.py``:
``pairs/{train,validation}``), each row a query, its positive and its mined negatives.

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
    return _dev_rows(f"data={redact(data)}", data, manifest, "blocks/validation", ["input_ids"], limit, workers,
                     "validation block(s)", "prepare the data with a larger validation_fraction")


def dev_pairs_dataset(pairs: str, manifest: dict, limit: int, workers: int):
    """The contrastive stage's dev pairs (bg2vec.training.dev_score): the first ``limit`` validation
    pairs in the manifest's file order, numbered like :func:`dev_dataset`'s blocks."""
    return _dev_rows(f"pairs={redact(pairs)}", pairs, manifest, "pairs/validation",
                     ["query", "positive", "instruction"], limit, workers, "validation pair(s)",
                     "make pairs with a larger validation share")


def _dev_rows(key: str, root: str, manifest: dict, folder: str, columns: list[str], limit: int, workers: int,
              what: str, remedy: str):
    table = _first_rows(root, manifest, folder, columns, limit)
    usable = min(table.num_rows, limit) // workers * workers
    if usable < 2:
        raise Bg2VecError(f"{key} has {table.num_rows} {what}; the dev score needs at least "
                          f"max(2, scaling.num_workers={workers}): {remedy}, or set run.dev_blocks=0")
    return _numbered(table.slice(0, usable))


def _first_rows(root: str, manifest: dict, folder: str, columns: list[str], limit: int):
    """Up to ``limit`` rows of ``folder``'s files, in the manifest's order (whole files: slice them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, rows = [], 0
    for name in manifest["files"][folder]:
        if rows >= limit:
            break
        fs, path = resolve(child(root, *folder.split("/"), name))
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
        rows += tables[-1].num_rows
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def _numbered(table):
    import pyarrow as pa
    import ray.data

    return ray.data.from_arrow(table.append_column("index", pa.array(np.arange(table.num_rows, dtype=np.int64))))


def pair_datasets(pairs: str, manifest: dict, seed: int, kinds: list[str], materialize: bool) -> dict:
    """The pairs of both splits (only those of ``kinds``, when given)."""
    datasets = {}
    for split in ("train", "validation"):
        ds = _read(pairs, manifest, f"pairs/{split}", ["query", "positive", "negatives", "instruction", "kind"])
        if kinds:
            ds = ds.map_batches(of_kinds, fn_kwargs=dict(kinds=kinds), batch_format="numpy", **_LIGHT)
        datasets[split] = ds.randomize_block_order(seed=seed)
    return _small_in_memory(datasets, materialize)


def of_kinds(batch: dict[str, np.ndarray], kinds: list[str]) -> dict[str, np.ndarray]:
    keep = np.isin(batch["kind"], kinds)
    return {k: v[keep] for k, v in batch.items()}


def _small_in_memory(datasets: dict, materialize: bool) -> dict:
    """Small datasets are read once into the object store instead of once per epoch (re-reading
    dominates the epochs of a small corpus); large ones stream."""
    return {split: ds.materialize() if materialize else ds for split, ds in datasets.items()}


PAIR_BYTES = 4 * 2**10  # a query and a passage of ~1,000 characters each, 2 bytes a (Cyrillic) character


def fits_in_memory(manifest: dict, stage: str) -> bool:
    """Whether the stage's data is under IN_MEMORY_BYTES (estimated from the prepared or pairs manifest)."""
    counts = manifest["counts"]
    if stage == "mntp":
        size = 4 * sum(counts["blocks"].values()) * manifest["seq_len"]  # int32 tokens
    elif stage == "contrastive":
        pairs = sum(n for split in counts.values() for n in split.values())
        size = PAIR_BYTES * pairs * (1 + ((manifest.get("negatives") or {}).get("per_pair") or 0))
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
        return self.inputs(batch["text"])

    def inputs(self, texts, instructions=None) -> dict[str, torch.Tensor]:
        """Tensors of ``texts``, each after its own instruction (``instructions``: one per text, None: none)."""
        return collate(self.sequences(texts, instructions), self.pad_id)

    def sequences(self, texts, instructions=None) -> list:
        texts = [str(t) for t in texts]
        instructions = [None] * len(texts) if instructions is None else list(instructions)
        sequences = [None] * len(texts)
        for instruction in set(instructions):  # build_sequences takes one instruction for all its texts
            chosen = [i for i, x in enumerate(instructions) if x == instruction]
            built = build_sequences(self.tokenizer, [texts[i] for i in chosen], instruction=instruction,
                                    max_length=self.max_length, add_bos=True, add_eos=self.add_eos)
            for i, sequence in zip(chosen, built):
                sequences[i] = sequence
        return sequences


class PairCollator(TextCollator):
    """A numpy batch of N pairs -> one padded batch of the N queries (each after its instruction: the
    pair's own, or ``query_instruction`` where the pair's is null; "" is none), then the N positives,
    then up to ``hard_negatives`` negatives of each pair in pair order (passages: no instruction), and
    ``is_query`` [rows]. One batch, so one forward pass: ZeRO-3 accepts one forward per backward only."""

    def __init__(self, tokenizer, max_length: int, pooling: str, query_instruction: str, hard_negatives: int):
        super().__init__(tokenizer, max_length, pooling)
        self.query_instruction, self.hard_negatives = query_instruction, hard_negatives

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        instructions = [self.query_instruction if x is None else x for x in batch["instruction"]]
        passages = list(batch["positive"])
        if self.hard_negatives:
            passages += [n for row in batch["negatives"] if row is not None for n in list(row)[:self.hard_negatives]]
        sequences = self.sequences(batch["query"], [x or None for x in instructions]) + self.sequences(passages)
        is_query = torch.arange(len(sequences)) < len(batch["query"])
        return {**collate(sequences, self.pad_id), "is_query": is_query}


class BlocksCollator(NumpyBatchCollateFn):
    """A numpy batch of equal-length token blocks -> input_ids [B, L] (int64)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(np.stack(batch["input_ids"]).astype(np.int64))}
