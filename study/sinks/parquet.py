"""Parquet tables of a study: the Arrow schemas, atomic appends, and keyed de-duplication.

Each table is a folder of part files (RESULTS/tables/NAME/part-*.parquet) that
`pandas.read_parquet(folder)` reads as one table. A part is written under a hidden temporary
name and renamed into place, so a reader never sees a partial file and a writer killed mid-write
leaves nothing behind but an ignored temporary. Rows are keyed (trial_key, eval_key, ...): a key
already in the table is never written again, so re-running a study adds no duplicate rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq

from study.evaluations import EVAL_TABLES, EvalTable
from trainables import storage

# 4: fisher.kind (the random-init reference rows) and the inversion's references.
# 5: the inversion's start and restarts.
SCHEMA_VERSION = 5

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


# A compacted part's metadata lists the parts it replaces (JSON list of base names); readers
# skip those while they still exist. analysis/tables.py reads the same key.
REPLACES_KEY = "atsweep.replaces"
# A part whose metadata says so holds each key at most once (the sink's flushes and the
# compaction write such parts): a table that is one such part counts its keys by its row count.
UNIQUE_KEY = "atsweep.unique_keys"
_READ_ATTEMPTS = 5


def with_unique_keys(table: pa.Table) -> pa.Table:
    """The table, its metadata saying that each key is in it at most once."""
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), UNIQUE_KEY.encode(): b"1"}
    )


def unique_keys(parts: list[tuple[str, pa.Table]]) -> bool:
    """Whether the parts a reader sees are one part that holds each key at most once."""
    return len(parts) == 1 and UNIQUE_KEY.encode() in (parts[0][1].schema.metadata or {})


def _read_parts(
    folder: str | Path, columns: list[str] | None = None
) -> tuple[list[str], list[tuple[str, pa.Table]]]:
    """The names of the part files found, and (name, table) of each part a reader should see:
    every part, minus those a compacted part replaces. A part that vanishes while it is read (a
    compaction removed it after writing the part that holds its rows) makes the reader list the
    folder again."""
    fs, base = storage.resolve(folder)
    for attempt in range(_READ_ATTEMPTS):
        names = sorted(p.rsplit("/", 1)[-1] for p in part_files(folder))
        try:
            parts = [(n, _read_part(fs, f"{base}/{n}", columns)) for n in names]
        except OSError:  # FileNotFoundError locally, an OSError naming the key on S3
            vanished = any(not storage.exists(storage.join(folder, n)) for n in names)
            if not vanished or attempt == _READ_ATTEMPTS - 1:
                raise
            continue
        replaced: set[str] = set()
        for _, part in parts:
            raw = (part.schema.metadata or {}).get(REPLACES_KEY.encode())
            if raw:
                replaced.update(json.loads(raw))
        return names, [(n, part) for n, part in parts if n not in replaced]
    return [], []


def _read_part(fs: pa.fs.FileSystem, path: str, columns: list[str] | None) -> pa.Table:
    """One part (the given columns of it, those it has), opened once."""
    if columns is None:
        return pq.read_table(path, filesystem=fs)
    with fs.open_input_file(path) as handle:
        part = pq.ParquetFile(handle)
        present = set(part.schema_arrow.names)
        table: pa.Table = part.read(columns=[c for c in columns if c in present])
        # ParquetFile.read keeps the file's key-value metadata (the compaction's replaces list).
        return table


def _read_conformed(
    folder: str | Path, table: str, columns: list[str] | None
) -> tuple[pa.Table, list[str], list[tuple[str, pa.Table]]]:
    """The parts a reader sees in the table's current schema (only `columns` when given), as one
    table; the names of the part files found; and the parts as read (with their metadata)."""
    schema = schema_with_metadata(table)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    names, parts = _read_parts(folder, columns)
    data = pa.concat_tables(
        [conform(part, schema, storage.join(folder, name)) for name, part in parts]
        or [schema.empty_table()]
    )
    return data, names, parts


def read_table(folder: str | Path, table: str, columns: list[str] | None = None) -> pa.Table:
    """All completed parts of a table, in its current schema (an empty table if none); with
    columns, only those columns are read from the files (the others are not in the result)."""
    return _read_conformed(folder, table, columns)[0]


def read_key_columns(
    folder: str | Path, table: str, extra: tuple[str, ...] = ()
) -> tuple[pa.Table, bool, int]:
    """A table's key columns (and the extra ones) as readers see them, whether each key is in
    them once for certain (one part marked UNIQUE_KEY), and how many part files it has."""
    data, names, parts = _read_conformed(folder, table, [*KEYS[table], *extra])
    return data, unique_keys(parts), len(names)


def unique_by_key(data: pa.Table, key: tuple[str, ...]) -> tuple[pa.Table, int]:
    """The rows whose key has not appeared before (the first written wins), and how many
    repeated ones were left out."""
    seen: set[tuple[Any, ...]] = set()
    keep: list[int] = []
    for i, row in enumerate(zip(*(data.column(k).to_pylist() for k in key), strict=True)):
        if row not in seen:
            seen.add(row)
            keep.append(i)
    if len(keep) == data.num_rows:
        return data, 0
    return data.take(pa.array(keep, type=pa.int64())), data.num_rows - len(keep)


@dataclass(frozen=True)
class Compaction:
    """What compacting one table did."""

    table: str
    parts_before: int
    rows: int
    duplicates: int

    @property
    def changed(self) -> bool:
        return self.parts_before > 1 or self.duplicates > 0


def compact_table(folder: str | Path, table: str) -> Compaction:
    """Merge a table's parts into one, in the current schema, each key once.

    The merged part is written first (atomically, listing the parts it replaces in its
    metadata, so that readers skip them while they exist), then the replaced parts are
    deleted: at no moment does a reader see a row twice or miss one. A table that is one
    part of the current schema, marked as holding each key once (UNIQUE_KEY), is left as it
    is. Only the study's lease holder compacts (a writer appending meanwhile would have its
    part deleted).
    """
    names, parts = _read_parts(folder)
    schema = schema_with_metadata(table)
    current = all(_version(part) == SCHEMA_VERSION for _, part in parts)
    data = pa.concat_tables(
        [conform(part, schema, storage.join(folder, name)) for name, part in parts]
        or [schema.empty_table()]
    )
    unique, duplicates = unique_by_key(data, tuple(KEYS[table]))
    if len(names) <= 1 and current and duplicates == 0 and (not parts or unique_keys(parts)):
        return Compaction(table, len(names), unique.num_rows, 0)
    metadata = {**(schema.metadata or {}), REPLACES_KEY.encode(): json.dumps(names).encode()}
    write_part_atomically(folder, with_unique_keys(unique.replace_schema_metadata(metadata)))
    fs, base = storage.resolve(folder)
    for name in names:
        delete_part(fs, f"{base}/{name}")
    return Compaction(table, len(names), unique.num_rows, duplicates)


def delete_part(fs: pa.fs.FileSystem, path: str) -> None:
    """Remove a part a compaction replaced (gone already: no error)."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def _version(part: pa.Table) -> int:
    metadata = part.schema.metadata or {}
    try:
        return int(metadata.get(b"atsweep.schema_version", b"1").decode())
    except ValueError:
        return 0


# Above this many rows a two-column key is grouped by pyarrow (its first group_by in a process
# costs about 0.4 s to set up; a Python loop is cheaper below).
_GROUP_IN_ARROW_ROWS = 200_000


class KeySet:
    """The keys of one table, held cheaply at a study's scale.

    Opening keeps the key columns as pyarrow read them; the Python structure that answers one
    key at a time (plain values for a one-column key such as eval_key, per value of the first
    column the set of the second for epochs' (trial_key, epoch)) is built on the first
    question or addition, once. Counting a table that is one part of unique keys needs neither
    (its row count)."""

    def __init__(self, data: pa.Table, key: tuple[str, ...], unique: bool = False) -> None:
        self.key = key
        self.width = len(key)
        self._data: pa.Table | None = data
        self._unique = unique
        self._flat: set[Any] = set()
        self._nested: dict[Any, set[Any]] = {}

    def _build(self) -> None:
        data, self._data = self._data, None
        if data is None:
            return
        key = self.key
        if self.width == 1:
            self._flat = set(data.column(key[0]).to_pylist())
        elif self.width == 2 and data.num_rows > _GROUP_IN_ARROW_ROWS:
            grouped = data.group_by(key[0]).aggregate([(key[1], "list")])
            firsts = grouped.column(key[0]).to_pylist()
            seconds = grouped.column(f"{key[1]}_list").to_pylist()
            self._nested = {a: set(b) for a, b in zip(firsts, seconds, strict=True)}
        elif self.width == 2:
            for a, b in zip(*(data.column(k).to_pylist() for k in key), strict=True):
                self._nested.setdefault(a, set()).add(b)
        else:
            self._flat = set(zip(*(data.column(k).to_pylist() for k in key), strict=True))

    def __len__(self) -> int:
        if self._data is not None and self._unique:
            return int(self._data.num_rows)
        self._build()
        if self.width == 2:
            return sum(len(seconds) for seconds in self._nested.values())
        return len(self._flat)

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        self._build()
        if self.width == 1:
            return key[0] in self._flat
        if self.width == 2:
            return key[1] in self._nested.get(key[0], ())
        return key in self._flat

    def add(self, key: tuple[Any, ...]) -> None:
        self._build()
        if self.width == 1:
            self._flat.add(key[0])
        elif self.width == 2:
            self._nested.setdefault(key[0], set()).add(key[1])
        else:
            self._flat.add(key)


class ParquetSink:
    """The single writer of a study's tables; it remembers every key already written.

    Rows are buffered per table (add) and written as one part per table at each flush;
    append writes at once. Opening a table reads only its key columns."""

    def __init__(self, tables_dir: str | Path) -> None:
        self.tables_dir = str(tables_dir)
        self._keys: dict[str, KeySet] = {}
        self._buffer: dict[str, list[Mapping[str, Any]]] = {}
        self.seconds = 0.0  # wall time spent writing parts
        self.seconds_by_table: dict[str, float] = {}
        self.parts: dict[str, int] = {}  # part files of each table, as this sink knows them
        for table in SCHEMAS:
            self._keys_of(table)

    def _keys_of(self, table: str) -> KeySet:
        """The keys in a table, read once (a table declared after the sink opened: on first
        use). A table with no part gets an empty one, so that readers find its schema."""
        if table not in self._keys:
            folder = storage.join(self.tables_dir, table)
            if not part_files(folder):
                write_part_atomically(
                    folder, with_unique_keys(schema_with_metadata(table).empty_table())
                )
            key = tuple(KEYS[table])
            data, unique, self.parts[table] = read_key_columns(folder, table)
            self._keys[table] = KeySet(data, key, unique)
        return self._keys[table]

    def has(self, table: str, *key: Any) -> bool:
        """Whether a row with this key is in the table (or waiting to be written to it)."""
        return tuple(key) in self._keys_of(table)

    def add(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Buffer the rows whose key is new (written at the next flush); returns how many."""
        schema = SCHEMAS[table]
        known = self._keys_of(table)
        fresh: list[Mapping[str, Any]] = []
        names = set(schema.names)
        for row in rows:
            missing = [n for n in row if n not in names]
            if missing:
                raise KeyError(f"columns {missing} are not in the {table} schema")
            key = tuple(row[k] for k in KEYS[table])
            if key not in known:
                known.add(key)
                fresh.append(row)
        if fresh:
            self._buffer.setdefault(table, []).extend(fresh)
        return len(fresh)

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write the rows whose key is new now, as one atomically written part."""
        count = self.add(table, rows)
        self.flush(table)
        return count

    def pending(self) -> int:
        """Rows buffered and not written yet."""
        return sum(len(rows) for rows in self._buffer.values())

    def flush(self, table: str | None = None) -> None:
        """Write the buffered rows: one part per table (all tables, or one)."""
        for name in [table] if table is not None else list(self._buffer):
            rows = self._buffer.pop(name, [])
            if not rows:
                continue
            start = time.perf_counter()
            try:
                # The buffered rows' keys are new (add): each is in the part once.
                write_part_atomically(
                    storage.join(self.tables_dir, name),
                    with_unique_keys(pa.Table.from_pylist(rows, schema=schema_with_metadata(name))),
                )
                self.parts[name] = self.parts.get(name, 0) + 1
            finally:
                spent = time.perf_counter() - start
                self.seconds += spent
                self.seconds_by_table[name] = self.seconds_by_table.get(name, 0.0) + spent

    def compact(self, min_parts: int = 1) -> list[Compaction]:
        """Flush, then compact every table of at least min_parts parts (see compact_table)."""
        self.flush()
        done = []
        for table in SCHEMAS:
            if self.parts.get(table, 0) < min_parts:
                continue
            start = time.perf_counter()
            try:
                done.append(compact_table(storage.join(self.tables_dir, table), table))
                self.parts[table] = 1
            finally:
                self.seconds += time.perf_counter() - start
        return done
