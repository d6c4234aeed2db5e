"""Ray Data source for a known list of Parquet files: one read task per file.

The prepared directory's manifest names its files, so nothing needs listing; and unlike
``read_parquet`` (whose listing task always asks for a CPU), these read tasks can declare no CPU,
which keeps them from waiting behind actor pools that hold every CPU of a small cluster.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from bg2vec import storage


class ParquetFilesDatasource(Datasource):
    def __init__(self, uris: list[str], columns: list[str] | None = None):
        self.uris, self.columns = uris, columns

    def get_name(self) -> str:
        return "ParquetFiles"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(functools.partial(_read_file, uri, self.columns),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(uri,)))
                for uri in self.uris]


ROWS_PER_BATCH = 1024  # Ray Data re-cuts them into blocks of its target size


def _read_file(uri: str, columns: list[str] | None) -> Iterator[pa.Table]:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
            yield pa.Table.from_batches([batch])
