"""Parquet sink on real files: schemas, atomic parts, de-duplication by key, pandas round trip."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from study.sinks.parquet import SCHEMA_VERSION, SCHEMAS, ParquetSink, part_files, read_table

pytestmark = pytest.mark.integration


def trial_row(key: str, eps: float) -> dict:
    return {
        "trial_key": key,
        "study": "t",
        "source": "digits-c01",
        "source_dataset": "digits",
        "source_classes": [0, 1],
        "arch": "small_cnn",
        "arch_name": "small_cnn",
        "width": 1.0,
        "norm": "l2",
        "eps": eps,
        "seed": 0,
        "epochs": 2,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "attack_steps": 7,
        "attack_step_size": 0.1,
        "eval_attack_steps": 20,
        "config_json": "{}",
        "train_loss": 0.5,
        "train_acc": 0.8,
        "test_acc_clean": 0.9,
        "test_acc_pgd": 0.7,
        "epochs_completed": 2,
        "train_time_s": 1.0,
        "checkpoint_path": "/x",
        "mlflow_run_id": "r",
        "completed_at": datetime.now(timezone.utc),
    }


def test_every_table_exists_and_loads_with_pandas_before_any_row(tmp_path: Path) -> None:
    ParquetSink(tmp_path)
    for name, schema in SCHEMAS.items():
        df = pd.read_parquet(tmp_path / name)
        assert list(df.columns) == schema.names and df.empty


def test_round_trip_keeps_values_types_and_schema_version(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    assert sink.append("trials", [trial_row("a", 0.5), trial_row("b", 1.0)]) == 2
    df = pd.read_parquet(tmp_path / "trials").sort_values("trial_key")
    assert df["trial_key"].tolist() == ["a", "b"]
    assert df["eps"].tolist() == [0.5, 1.0]
    assert list(df["source_classes"].iloc[0]) == [0, 1]
    meta = pq.read_schema(part_files(tmp_path / "trials")[-1]).metadata
    assert meta[b"atsweep.schema_version"] == str(SCHEMA_VERSION).encode()
    sink.append(
        "fisher",
        [
            {
                "eval_key": "f1",
                "trial_key": "a",
                "weight_trace_per_layer": {"head": 1.5},
                "input_trace": 2.0,
            }
        ],
    )
    fisher = read_table(tmp_path / "fisher", "fisher").to_pylist()
    assert fisher[0]["weight_trace_per_layer"] == [("head", 1.5)]
    assert math.isclose(fisher[0]["input_trace"], 2.0)


def test_keys_already_written_are_never_written_again(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    sink.append("epochs", [{"trial_key": "a", "epoch": 0}, {"trial_key": "a", "epoch": 1}])
    assert (
        sink.append("epochs", [{"trial_key": "a", "epoch": 1}, {"trial_key": "a", "epoch": 2}]) == 1
    )
    # A new writer (a re-run of the study) sees the keys on disk.
    again = ParquetSink(tmp_path)
    assert again.has("epochs", "a", 2)
    assert again.append("epochs", [{"trial_key": "a", "epoch": 0}]) == 0
    df = pd.read_parquet(tmp_path / "epochs")
    assert sorted(df["epoch"]) == [0, 1, 2]


def test_a_killed_write_leaves_no_visible_partial_file(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    sink.append("trials", [trial_row("a", 0.5)])
    # A writer killed mid-write leaves its hidden temporary behind, possibly truncated.
    (tmp_path / "trials" / ".part-99999999999999999999-dead.parquet.tmp").write_bytes(b"PAR1 trunc")
    df = pd.read_parquet(tmp_path / "trials")
    assert df["trial_key"].tolist() == ["a"]
    assert read_table(tmp_path / "trials", "trials").num_rows == 1


def test_unknown_column_is_an_error_naming_it(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    with pytest.raises(KeyError, match="acc_typo"):
        sink.append("epochs", [{"trial_key": "a", "epoch": 0, "acc_typo": 1.0}])
    assert not sink.has("epochs", "a", 0)


def test_an_older_schema_version_reads_with_nulls_in_new_columns(tmp_path: Path) -> None:
    import pyarrow as pa

    from study.sinks.parquet import write_part_atomically

    ParquetSink(tmp_path)
    old = pa.table({"trial_key": ["a"], "epoch": [0], "train_loss": [1.5]})  # a v1-like part
    write_part_atomically(tmp_path / "epochs", old)
    rows = read_table(tmp_path / "epochs", "epochs").to_pylist()
    assert rows == [
        {
            "trial_key": "a",
            "epoch": 0,
            "train_loss": 1.5,
            "train_acc": None,
            "test_acc_clean": None,
            "test_acc_pgd": None,
            "epoch_time_s": None,
        }
    ]
    assert ParquetSink(tmp_path).has("epochs", "a", 0)


def test_a_conflicting_column_type_is_a_clear_error(tmp_path: Path) -> None:
    import pyarrow as pa

    from study.sinks.parquet import SchemaConflictError, write_part_atomically

    ParquetSink(tmp_path)
    bad = pa.table({"trial_key": ["a"], "epoch": ["zero"]})
    path = write_part_atomically(tmp_path / "epochs", bad)
    with pytest.raises(
        SchemaConflictError, match=r"'epoch' is string but the schema says int64"
    ) as err:
        read_table(tmp_path / "epochs", "epochs")
    assert Path(path).name in str(err.value)


def epoch_rows(trial: str, epochs: range) -> list[dict]:
    return [
        {"trial_key": trial, "epoch": e, "train_loss": 1.0 / (e + 1), "epoch_time_s": 0.5}
        for e in epochs
    ]


def read_while_compacting(tables: str, parts: int = 24) -> None:
    """Write a table as a long study does (many small parts, the oldest of an older schema
    version), compact it, and read it at every step of the compaction, from this thread (inside
    each deletion: deterministic) and from a reader thread (concurrent): every read sees every
    row exactly once. Ends with one part in the current schema."""
    import threading
    from unittest import mock

    import pyarrow as pa

    from analysis import load_table
    from study.sinks.parquet import compact_table, write_part_atomically
    from trainables import storage

    folder = storage.join(tables, "epochs")
    old = pa.table({"trial_key": ["old"], "epoch": [0], "train_loss": [9.0]})  # no epoch_time_s
    old = old.replace_schema_metadata({"atsweep.table": "epochs", "atsweep.schema_version": "1"})
    write_part_atomically(folder, old)
    sink = ParquetSink(tables)
    for i in range(parts):
        sink.append("epochs", epoch_rows(f"t{i % 4}", range(i // 4 * 3, i // 4 * 3 + 3)))
    expected = sorted(
        [("old", 0)]
        + [(f"t{i % 4}", e) for i in range(parts) for e in range(i // 4 * 3, i // 4 * 3 + 3)]
    )
    results_dir = tables.rsplit("/", 1)[0]

    def check() -> None:
        rows = read_table(folder, "epochs").select(["trial_key", "epoch"]).to_pylist()
        assert sorted((r["trial_key"], r["epoch"]) for r in rows) == expected
        df = load_table(results_dir, "epochs")
        assert sorted(zip(df["trial_key"], df["epoch"], strict=True)) == expected

    reads, failures, done = [0], [], threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                check()
                reads[0] += 1
            except Exception as exc:  # reported to the test's thread
                failures.append(exc)
                return

    from study.sinks import parquet

    delete = parquet.delete_part

    calls = [0]

    def delete_and_read(fs: object, path: str) -> None:
        calls[0] += 1
        check()  # the merged part and the parts it replaces both exist here
        delete(fs, path)  # type: ignore[arg-type]
        check()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with mock.patch.object(parquet, "delete_part", delete_and_read):
            done_compaction = compact_table(folder, "epochs")
    finally:
        done.set()
        thread.join()
    assert not failures, failures[0]
    assert calls[0] == parts + 1  # every deletion was read around
    # The old-schema part and one part per append (the sink found a part: no empty one).
    assert done_compaction.parts_before == parts + 1 and done_compaction.rows == len(expected)
    assert len(part_files(folder)) == 1
    check()
    merged = (
        pq.read_table(part_files(folder)[0].removeprefix("file://"))
        if "://" not in tables
        else None
    )
    if merged is not None:
        assert merged.schema.metadata[b"atsweep.schema_version"] == str(SCHEMA_VERSION).encode()


def test_readers_during_a_compaction_see_every_row_once(tmp_path: Path) -> None:
    read_while_compacting(str(tmp_path / "tables"))
    # pandas reads the one merged part: the newer column of the old-schema row is there (null).
    df = pd.read_parquet(tmp_path / "tables" / "epochs")
    assert "epoch_time_s" in df.columns and df["epoch_time_s"].isna().sum() == 1


def test_compaction_removes_repeated_keys_and_keeps_the_first_written(tmp_path: Path) -> None:
    from study.sinks.parquet import compact_table, write_part_atomically

    folder = tmp_path / "tables" / "epochs"
    ParquetSink(tmp_path / "tables").append("epochs", epoch_rows("a", range(3)))
    import pyarrow as pa

    from study.sinks.parquet import schema_with_metadata

    # A second driver's copy of the same rows (as before the lease), with other values.
    again = [{**r, "train_loss": 7.0} for r in epoch_rows("a", range(3))]
    write_part_atomically(
        folder, pa.Table.from_pylist(again, schema=schema_with_metadata("epochs"))
    )
    done = compact_table(folder, "epochs")
    assert (done.duplicates, done.rows, len(part_files(folder))) == (3, 3, 1)
    df = pd.read_parquet(folder)
    assert sorted(df["epoch"]) == [0, 1, 2] and 7.0 not in set(df["train_loss"])
    assert compact_table(folder, "epochs").changed is False  # one current part: left alone


def test_a_table_is_compacted_once_it_has_enough_parts(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path / "tables")
    for i in range(4):
        sink.append("epochs", epoch_rows(f"t{i}", range(2)))
    folder = tmp_path / "tables" / "epochs"
    assert sink.parts["epochs"] == 5 == len(part_files(folder))  # the empty part and 4 more
    assert [c.table for c in sink.compact(min_parts=6)] == []  # not yet
    sink.add("epochs", epoch_rows("t9", range(2)))
    done = sink.compact(min_parts=6)  # the buffered rows are written first: 6 parts
    assert [(c.table, c.parts_before, c.rows) for c in done] == [("epochs", 6, 10)]
    assert len(part_files(folder)) == 1 and sink.parts["epochs"] == 1
    assert ParquetSink(tmp_path / "tables").parts["epochs"] == 1  # as a new sink finds it


def test_a_table_is_counted_by_its_distinct_keys_whoever_wrote_it(tmp_path: Path) -> None:
    """One part written by another program may repeat a key: counted once. The sink's parts and
    a compacted part say they hold each key once, and count by their rows."""
    import pyarrow as pa

    from study.sinks.parquet import (
        UNIQUE_KEY,
        KeySet,
        compact_table,
        read_key_columns,
        schema_with_metadata,
        write_part_atomically,
    )

    folder = tmp_path / "tables" / "epochs"
    twice = epoch_rows("a", range(3)) + epoch_rows("a", range(2))  # (a, 0) and (a, 1) twice
    part = pa.Table.from_pylist(twice, schema=schema_with_metadata("epochs"))
    write_part_atomically(folder, part)
    data, unique, parts = read_key_columns(folder, "epochs")
    assert (unique, parts, data.num_rows) == (False, 1, 5)
    assert len(KeySet(data, ("trial_key", "epoch"), unique)) == 3
    sink = ParquetSink(tmp_path / "tables")
    assert sink.has("epochs", "a", 2) and not sink.has("epochs", "a", 3)
    assert sink.append("epochs", epoch_rows("a", range(5))) == 2  # epochs 3 and 4 only

    done = compact_table(folder, "epochs")
    assert (done.parts_before, done.rows, done.duplicates) == (2, 5, 2)
    (merged,) = part_files(folder)
    assert UNIQUE_KEY.encode() in pq.read_schema(merged).metadata
    data, unique, _ = read_key_columns(folder, "epochs")
    assert unique and len(KeySet(data, ("trial_key", "epoch"), unique)) == 5
    assert ParquetSink(tmp_path / "tables").has("epochs", "a", 4)


def test_compaction_marks_a_lone_part_of_unknown_keys_once(tmp_path: Path) -> None:
    import pyarrow as pa

    from study.sinks.parquet import (
        compact_table,
        read_key_columns,
        schema_with_metadata,
        write_part_atomically,
    )

    folder = tmp_path / "tables" / "epochs"
    rows = pa.Table.from_pylist(epoch_rows("a", range(3)), schema=schema_with_metadata("epochs"))
    write_part_atomically(folder, rows)  # unique in fact, but not marked as such
    assert read_key_columns(folder, "epochs")[1] is False
    compact_table(folder, "epochs")  # rewritten once, marked
    assert read_key_columns(folder, "epochs")[1] is True
    (part,) = part_files(folder)
    compact_table(folder, "epochs")  # then left alone
    assert part_files(folder) == [part]
