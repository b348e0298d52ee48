"""Parquet tables of a study: the Arrow schemas, atomic appends, and keyed de-duplication.

Each table is a folder of part files (RESULTS/tables/NAME/part-*.parquet) that
`pandas.read_parquet(folder)` reads as one table. A part is written under a hidden temporary
name and renamed into place, so a reader never sees a partial file and a writer killed mid-write
leaves nothing behind but an ignored temporary. Rows are keyed (trial_key, eval_key, ...): a key
already in the table is never written again, so re-running a study adds no duplicate rows.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from study.evaluations import EVAL_TABLES, EvalTable
from trainables import storage

SCHEMA_VERSION = 3

_TRIAL_CONFIG = [
    pa.field("trial_key", pa.string(), nullable=False),
    pa.field("study", pa.string()),
    pa.field("source", pa.string()),
    pa.field("source_dataset", pa.string()),
    pa.field("source_classes", pa.list_(pa.int64())),
    pa.field("arch", pa.string()),
    pa.field("arch_name", pa.string()),
    pa.field("width", pa.float64()),
    pa.field("norm", pa.string()),
    pa.field("attack", pa.string()),
    pa.field("attack_method", pa.string()),
    pa.field("eps", pa.float64()),
    pa.field("seed", pa.int64()),
    pa.field("epochs", pa.int64()),
    pa.field("batch_size", pa.int64()),
    pa.field("optimizer", pa.string()),
    pa.field("lr", pa.float64()),
    pa.field("momentum", pa.float64()),
    pa.field("weight_decay", pa.float64()),
    pa.field("schedule", pa.string()),
    pa.field("attack_steps", pa.int64()),
    pa.field("attack_step_size", pa.float64()),
    pa.field("eval_attack_steps", pa.int64()),
    pa.field("config_json", pa.string()),
]

_CORE_SCHEMAS: dict[str, pa.Schema] = {
    "trials": pa.schema(
        [
            *_TRIAL_CONFIG,
            pa.field("train_loss", pa.float64()),
            pa.field("train_acc", pa.float64()),
            pa.field("test_acc_clean", pa.float64()),
            pa.field("test_acc_pgd", pa.float64()),
            pa.field("epochs_completed", pa.int64()),
            pa.field("train_time_s", pa.float64()),
            pa.field("checkpoint_path", pa.string()),
            pa.field("node_id", pa.string()),
            pa.field("proposed_by", pa.string()),  # grid, or optuna:SAMPLER (version 3)
            pa.field("mlflow_run_id", pa.string()),
            pa.field("completed_at", pa.timestamp("ms", tz="UTC")),
        ]
    ),
    "epochs": pa.schema(
        [
            pa.field("trial_key", pa.string(), nullable=False),
            pa.field("epoch", pa.int64(), nullable=False),
            pa.field("train_loss", pa.float64()),
            pa.field("train_acc", pa.float64()),
            pa.field("test_acc_clean", pa.float64()),
            pa.field("test_acc_pgd", pa.float64()),
            pa.field("epoch_time_s", pa.float64()),
        ]
    ),
}
_CORE_KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_key",),
    "epochs": ("trial_key", "epoch"),
}


class _Tables(Mapping[str, Any]):
    """A live view of every table: trials and epochs, then the evaluation tables declared in
    study/evaluations.py (a table declared later, by a new evaluation kind, appears here too)."""

    def __init__(self, core: Mapping[str, Any], of_eval: Callable[[EvalTable], Any]) -> None:
        self._core, self._of_eval = core, of_eval

    def __getitem__(self, name: str) -> Any:
        if name in self._core:
            return self._core[name]
        if name in EVAL_TABLES:
            return self._of_eval(EVAL_TABLES[name])
        raise KeyError(f"unknown table {name!r}: choose one of {', '.join(self)}")

    def __iter__(self) -> Iterator[str]:
        yield from self._core
        yield from EVAL_TABLES

    def __len__(self) -> int:
        return len(self._core) + len(EVAL_TABLES)


SCHEMAS: Mapping[str, pa.Schema] = _Tables(_CORE_SCHEMAS, lambda t: t.schema)
KEYS: Mapping[str, tuple[str, ...]] = _Tables(_CORE_KEYS, lambda t: t.key)


def schema_with_metadata(table: str) -> pa.Schema:
    """The table's schema, tagged with its name and schema version."""
    return SCHEMAS[table].with_metadata(
        {"atsweep.table": table, "atsweep.schema_version": str(SCHEMA_VERSION)}
    )


def part_files(folder: str | Path) -> list[str]:
    """The completed part files of a table (temporaries are hidden and never listed)."""
    return [
        storage.join(folder, name)
        for name, is_dir in storage.list_dir(folder)
        if not is_dir and name.startswith("part-") and name.endswith(".parquet")
    ]


def write_part_atomically(folder: str | Path, table: pa.Table) -> str:
    """Write one part so that no reader ever sees it incomplete.

    On a local disk: under a hidden name, fsync'd, then renamed into place (and the folder
    fsync'd, so the rename survives a crash). On an object store (s3://...) the object is
    written under its final name: a PUT becomes visible only once the upload is complete.
    """
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    if storage.is_remote(folder):
        fs, path = storage.resolve(folder)
        fs.create_dir(path, recursive=True)
        pq.write_table(table, f"{path}/{name}", filesystem=fs)
        return storage.join(folder, name)
    folder = Path(storage.resolve(folder)[1])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp)
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / name)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return str(folder / name)


class SchemaConflictError(TypeError):
    """A part whose column has a type the current schema cannot take."""


def conform(part: pa.Table, schema: pa.Schema, source: str = "a part") -> pa.Table:
    """A part in the current schema: columns an older schema version lacks are filled with
    nulls; a column whose type conflicts with the schema is an error naming it."""
    columns = []
    for f in schema:
        if f.name not in part.column_names:
            columns.append(pa.nulls(part.num_rows, f.type))
            continue
        column = part.column(f.name)
        if column.type != f.type:
            try:
                column = column.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaConflictError(
                    f"{source}: column {f.name!r} is {column.type} but the schema says {f.type}: "
                    "the file was written by another program or a conflicting version; move it "
                    "out of the table folder"
                ) from exc
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def read_table(folder: str | Path, table: str) -> pa.Table:
    """All completed parts of a table, in its current schema (an empty table if none)."""
    schema = schema_with_metadata(table)
    fs, base = storage.resolve(folder)
    names = [p.rsplit("/", 1)[-1] for p in part_files(folder)]
    parts = [
        conform(pq.read_table(f"{base}/{name}", filesystem=fs), schema, storage.join(folder, name))
        for name in names
    ]
    if not parts:
        return schema.empty_table()
    return pa.concat_tables(parts)


class ParquetSink:
    """The single writer of a study's tables; it remembers every key already written."""

    def __init__(self, tables_dir: str | Path) -> None:
        self.tables_dir = str(tables_dir)
        self._keys: dict[str, set[tuple[Any, ...]]] = {}
        self.seconds = 0.0  # wall time spent writing parts (append)
        for table in SCHEMAS:
            self._keys_of(table)

    def _keys_of(self, table: str) -> set[tuple[Any, ...]]:
        """The keys in a table, read once (a table declared after the sink opened: on first
        use). A table with no part gets an empty one, so that readers find its schema."""
        if table not in self._keys:
            folder = storage.join(self.tables_dir, table)
            if not part_files(folder):
                write_part_atomically(folder, schema_with_metadata(table).empty_table())
            existing = read_table(folder, table).select(list(KEYS[table])).to_pylist()
            self._keys[table] = {tuple(r[k] for k in KEYS[table]) for r in existing}
        return self._keys[table]

    def has(self, table: str, *key: Any) -> bool:
        """Whether a row with this key is already in the table."""
        return tuple(key) in self._keys_of(table)

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append the rows whose key is new, as one atomically written part; returns how many."""
        start = time.perf_counter()
        try:
            return self._append(table, rows)
        finally:
            self.seconds += time.perf_counter() - start

    def _append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        fresh: list[Mapping[str, Any]] = []
        fresh_keys: set[tuple[Any, ...]] = set()
        known = self._keys_of(table)
        for row in rows:
            key = tuple(row[k] for k in KEYS[table])
            if key not in known and key not in fresh_keys:
                fresh_keys.add(key)
                fresh.append(row)
        if fresh:
            schema = schema_with_metadata(table)
            missing = [n for n in fresh[0] if n not in schema.names]
            if missing:
                raise KeyError(f"columns {missing} are not in the {table} schema")
            write_part_atomically(
                storage.join(self.tables_dir, table),
                pa.Table.from_pylist(list(fresh), schema=schema),
            )
            known |= fresh_keys
        return len(fresh)
