"""The user's own pairs: JSON Lines or Parquet files, checked field by field before any work starts.

Each record has ``query`` and ``positive`` (non-empty strings), and may have ``negatives`` (a list of
non-empty strings: hard negatives for the query) and ``instruction`` (a string for this query: ""
for none; null or absent: the training stage's query instruction). Other fields are ignored. A
record that breaks this is a :class:`Bg2VecError` naming the file, the line (JSON Lines) or row
(Parquet, counted from 1) and the field.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bg2vec import storage
from bg2vec.errors import Bg2VecError

FIELDS = ("query", "positive", "negatives", "instruction")
REQUIRED = ("query", "positive")
USER_SCHEMA = pa.schema([("query", pa.string()), ("positive", pa.string()), ("negatives", pa.list_(pa.string())),
                         ("instruction", pa.string())])
_HINT = ("each record needs query and positive (non-empty strings), and may have negatives (a list of non-empty "
         "strings) and instruction (a string)")


def read_user_pairs(files: list[str]) -> pa.Table:
    """All records of ``files``, in order, as query, positive, negatives (empty when absent), instruction."""
    tables = [_read_file(uri) for uri in files]
    return pa.concat_tables(tables) if tables else USER_SCHEMA.empty_table()


def _read_file(uri: str) -> pa.Table:
    fs, path = storage.resolve(uri)
    name = storage.redact(uri)
    if not storage.exists(fs, path):
        raise Bg2VecError(f"pairs file {name} does not exist (files=)")
    if path.endswith(".jsonl"):
        with fs.open_input_stream(path) as stream:
            return _read_jsonl(io.TextIOWrapper(stream, encoding="utf-8"), name)
    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            return _check_parquet(pq.read_table(f), name)
    raise Bg2VecError(f"pairs file {name}: unknown extension; give JSON Lines (.jsonl) or Parquet (.parquet) files")


def _read_jsonl(lines, name: str) -> pa.Table:
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"pairs file {name}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise Bg2VecError(f"{where}: invalid JSON ({e.msg}); {_HINT}") from None
        if not isinstance(record, dict):
            raise Bg2VecError(f"{where}: a JSON object is expected, got {type(record).__name__}; {_HINT}")
        records.append(_check_record(record, where))
    return pa.Table.from_pylist(records, schema=USER_SCHEMA)


def _check_record(record: dict, where: str) -> dict:
    for field in REQUIRED:
        value = record.get(field)
        if value is None:
            raise Bg2VecError(f"{where}: field {field!r} is missing; {_HINT}")
        if not isinstance(value, str):
            raise Bg2VecError(f"{where}: field {field!r} must be a string, got {type(value).__name__}; {_HINT}")
        if not value.strip():
            raise Bg2VecError(f"{where}: field {field!r} is an empty string; {_HINT}")
    negatives = record.get("negatives")
    if negatives is not None and (not isinstance(negatives, list) or
                                  not all(isinstance(n, str) and n.strip() for n in negatives)):
        raise Bg2VecError(f"{where}: field 'negatives' must be a list of non-empty strings, got {negatives!r:.80}; "
                          f"{_HINT}")
    instruction = record.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise Bg2VecError(f"{where}: field 'instruction' must be a string, got {type(instruction).__name__}; {_HINT}")
    return {"query": record["query"], "positive": record["positive"], "negatives": negatives or [],
            "instruction": instruction}


def _check_parquet(table: pa.Table, name: str) -> pa.Table:
    columns = {}
    for field in FIELDS:
        if field not in table.column_names:
            if field in REQUIRED:
                raise Bg2VecError(f"pairs file {name}: column {field!r} is missing (columns: "
                                  f"{', '.join(table.column_names)}); {_HINT}")
            columns[field] = pa.nulls(table.num_rows, USER_SCHEMA.field(field).type)
            continue
        column = table[field]
        wanted = USER_SCHEMA.field(field).type
        if not column.type.equals(wanted) and not _castable(column.type, wanted):
            raise Bg2VecError(f"pairs file {name}: column {field!r} must be {wanted}, got {column.type}; {_HINT}")
        columns[field] = column.cast(wanted)
    for field in REQUIRED:
        bad = pc.or_kleene(pc.is_null(columns[field]), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(
            columns[field])), 0))
        _fail_at_first(bad, name, field, "is missing or an empty string")
    negatives = columns["negatives"]
    elements = pc.list_flatten(negatives)
    empty = pc.or_kleene(pc.is_null(elements), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(elements)), 0))
    if pc.any(empty).as_py():
        row = pc.list_parent_indices(negatives).to_pylist()[pc.index(empty, True).as_py()]
        raise Bg2VecError(f"pairs file {name}, row {row + 1}: field 'negatives' holds a null or empty string; {_HINT}")
    columns["negatives"] = pc.if_else(pc.is_null(negatives), pa.scalar([], USER_SCHEMA.field("negatives").type),
                                      negatives)
    return pa.table(columns, schema=USER_SCHEMA)


def _castable(actual: pa.DataType, wanted: pa.DataType) -> bool:
    """Large and small string (and list) types hold the same values."""
    if pa.types.is_string(wanted):
        return pa.types.is_large_string(actual) or pa.types.is_null(actual)
    return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _castable_value(actual.value_type)


def _castable_value(actual: pa.DataType) -> bool:
    return pa.types.is_string(actual) or pa.types.is_large_string(actual)


def _fail_at_first(bad: pa.ChunkedArray, name: str, field: str, what: str) -> None:
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise Bg2VecError(f"pairs file {name}, row {row + 1}: field {field!r} {what}; {_HINT}")
