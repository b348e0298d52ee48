"""load_table reads each row once: duplicate keys left out, and parts a compaction replaces or
deletes while the table is read."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from analysis import aggregate_seeds, load_tables, tradeoff_table
from analysis import tables as tables_module
from analysis.tables import (
    KEYS,
    LIST_ATTEMPTS,
    REPLACES_KEY,
    TABLES,
    DuplicateRowsWarning,
    SchemaVersionError,
    TableChangingError,
    check_schema_versions,
    load_table,
)
from study.sinks.parquet import SCHEMAS, schema_with_metadata
from tests.analysis_study import build_study, write_table

pytestmark = pytest.mark.unit

# A value column per table, to tell which of two rows with one key was kept.
VALUE = {
    "trials": "test_acc_clean",
    "epochs": "train_loss",
    "transfer": "test_acc",
    "fisher": "input_trace",
    "robustness": "robust_acc",
    "source": "test_acc_pgd",
    "inversion": "psnr",
}


def row(name: str, i: int, value: float) -> dict[str, Any]:
    """A row of table `name` whose key is made from i."""
    out: dict[str, Any] = {"trial_key": f"trial-{i}", VALUE[name]: value}
    if name == "epochs":
        out.update(trial_key="trial-0", epoch=i)
    elif name != "trials":
        out["eval_key"] = f"eval-{i}"
    return out


def keys_of(df: pd.DataFrame, name: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in df[list(KEYS[name])].itertuples(index=False)]


def duplicate_warnings(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DuplicateRowsWarning)]


@pytest.fixture
def recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning raised inside the test, none suppressed as a repeat."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def write_compacted(
    results: Path, name: str, replaces: Sequence[str], part: int = 9, metadata: bytes | None = None
) -> Path:
    """The part a compaction writes: the rows of `replaces` merged, each key once (the first
    written), its metadata naming the parts it replaces. The replaced parts are left in place."""
    folder = results / "tables" / name
    merged = pa.concat_tables([pq.read_table(folder / base) for base in replaces])
    df = merged.to_pandas().drop_duplicates(list(KEYS[name]), keep="first")
    schema = schema_with_metadata(name)
    tagged = schema.with_metadata(
        {**schema.metadata, REPLACES_KEY: metadata or json.dumps(list(replaces)).encode()}
    )
    path = folder / f"part-{part}.parquet"
    pq.write_table(pa.Table.from_pandas(df, schema=tagged, preserve_index=False), path)
    return path


def three_parts(results: Path, name: str) -> None:
    """part-0 and part-1 share two keys (written twice by two drivers); part-2 is new rows."""
    write_table(results, name, [row(name, i, 0.1) for i in (0, 1, 2)], part=0)
    write_table(results, name, [row(name, i, 0.2) for i in (1, 2, 3)], part=1)
    write_table(results, name, [row(name, i, 0.3) for i in (4, 5)], part=2)


def sorted_rows(df: pd.DataFrame, name: str) -> pd.DataFrame:
    return df.sort_values(list(KEYS[name])).reset_index(drop=True)


# ----- the keys ----------------------------------------------------------------------------------
def test_the_keys_are_the_sinks_keys() -> None:
    from study.sinks import parquet

    assert set(KEYS) == set(TABLES)
    for name in TABLES:
        assert KEYS[name] == tuple(parquet.KEYS[name]), name
    # study/sinks/parquet.py writes the metadata key of a compacted part that this reader skips
    # by (it spells it as str, the analysis as the bytes pyarrow's metadata holds).
    writer_key = parquet.REPLACES_KEY
    assert (writer_key.encode() if isinstance(writer_key, str) else writer_key) == REPLACES_KEY


@pytest.mark.parametrize("name", TABLES)
def test_each_key_is_read_once_keeping_the_first_written_with_one_warning(
    tmp_path: Path, name: str, recorded: list[warnings.WarningMessage]
) -> None:
    three_parts(tmp_path, name)
    df = load_table(tmp_path, name)
    assert len(df) == 6
    assert sorted(keys_of(df, name)) == sorted(set(keys_of(df, name)))
    values = dict(zip(keys_of(df, name), df[VALUE[name]], strict=True))
    # Keys 1 and 2 were written first in part-0, with 0.1.
    assert [values[k] for k in sorted(values)] == [0.1, 0.1, 0.1, 0.2, 0.3, 0.3]
    messages = duplicate_warnings(recorded)
    assert len(messages) == 1
    message = messages[0]
    assert f"table {name} of {tmp_path}: 2 duplicate row(s) left out" in message
    assert f"({', '.join(KEYS[name])})" in message
    assert "two drivers at once, or a compaction was interrupted" in message
    assert f"`study compact {tmp_path}` removes them" in message


def test_a_study_without_duplicates_reads_without_a_warning(
    tmp_path: Path, recorded: list[warnings.WarningMessage]
) -> None:
    build_study(tmp_path, transfer={"cifar100": lambda e, s: 0.5}, raw_pixels={"cifar100": 0.3})
    for name in TABLES:
        write_table(tmp_path, name, [row(name, 100, 0.5)], part=1)  # new keys, in a second part
    tables = load_tables(tmp_path)
    assert len(tables["trials"]) == 12 + 1
    assert duplicate_warnings(recorded) == []


def test_a_study_written_twice_by_two_drivers_counts_one_seed(
    tmp_path: Path, recorded: list[warnings.WarningMessage]
) -> None:
    # The bug of scale: every row there twice made n = 2 seeds with std 0 for one seed.
    build_study(tmp_path, eps=(0.0, 1.0), seeds=(0,), transfer={"cifar100": lambda e, s: 0.5})
    for name in TABLES:
        folder = tmp_path / "tables" / name
        if (folder / "part-0.parquet").is_file():  # a study without imported networks: no source
            shutil.copy(folder / "part-0.parquet", folder / "part-1.parquet")
    tables = load_tables(tmp_path)
    assert len(tables["trials"]) == 2
    stats = aggregate_seeds(tables["trials"], ["eps"], "test_acc_clean")
    assert list(stats["n"]) == [1, 1]
    assert stats["std"].isna().all() and stats["ci_low"].isna().all()
    assert list(tradeoff_table(tmp_path).query("row_kind == 'trained'")["seeds"]) == [1, 1]
    # One warning per read of a table that had duplicates (the empty ones have none): the
    # trials and transfer tables, read by load_tables and again by tradeoff_table.
    messages = duplicate_warnings(recorded)
    assert sorted(m.split(":")[0] for m in messages) == sorted(
        [f"table {n} of {tmp_path}" for n in ("trials", "transfer")] * 2
    )
    assert all(": 2 duplicate row(s) left out" in m for m in messages)


def test_rows_without_a_key_are_never_duplicates(
    tmp_path: Path, recorded: list[warnings.WarningMessage]
) -> None:
    # A foreign part with no key column reads as is, alone or beside keyed parts (its rows'
    # keys are then null, which identify nothing).
    folder = tmp_path / "tables" / "trials"
    folder.mkdir(parents=True)
    foreign = pa.table({"test_acc_clean": [0.5, 0.5]})
    pq.write_table(foreign, folder / "part-0.parquet")
    assert list(load_table(tmp_path, "trials")["test_acc_clean"]) == [0.5, 0.5]
    write_table(tmp_path, "trials", [row("trials", 0, 0.9)], part=1)
    df = load_table(tmp_path, "trials")
    assert len(df) == 3 and df["trial_key"].isna().sum() == 2
    assert duplicate_warnings(recorded) == []


# ----- reads during a compaction ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["trials", "epochs", "transfer"])
def test_a_compacted_part_beside_the_parts_it_replaces_reads_each_row_once(
    tmp_path: Path, name: str, recorded: list[warnings.WarningMessage]
) -> None:
    three_parts(tmp_path, name)
    write_compacted(tmp_path, name, ["part-0.parquet", "part-1.parquet"])
    during = load_table(tmp_path, name)
    assert len(during) == 6
    assert duplicate_warnings(recorded) == []  # the replaced parts were not read as rows
    for base in ("part-0.parquet", "part-1.parquet"):
        (tmp_path / "tables" / name / base).unlink()
    after = load_table(tmp_path, name)
    pd.testing.assert_frame_equal(sorted_rows(during, name), sorted_rows(after, name))
    assert sorted(after[VALUE[name]]) == [0.1, 0.1, 0.1, 0.2, 0.3, 0.3]


def test_a_compacted_part_whose_replaced_parts_are_gone_reads_normally(tmp_path: Path) -> None:
    three_parts(tmp_path, "transfer")
    write_compacted(tmp_path, "transfer", ["part-0.parquet", "part-1.parquet"])
    for base in ("part-0.parquet", "part-1.parquet"):
        (tmp_path / "tables" / "transfer" / base).unlink()
    df = load_table(tmp_path, "transfer")
    assert sorted(df["eval_key"]) == [f"eval-{i}" for i in range(6)]
    assert check_schema_versions(tmp_path, "transfer") == tables_module.KNOWN_SCHEMA_VERSION


class Compaction:
    """Wraps the function that reads a part: its first call runs a compaction (write the merged
    part, then delete the parts it replaces), as one running at that moment would. Counts the
    listings of the folder too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, results: Path, name: str) -> None:
        self.results, self.name = results, name
        self.read: list[str] = []
        self.listings = 0
        self.done = False
        read_part, part_paths = tables_module._read_part, tables_module._part_paths

        def counting_paths(fs: pafs.FileSystem, root: str, table: str) -> list[str]:
            self.listings += 1
            return part_paths(fs, root, table)

        def compacting_read(fs: pafs.FileSystem, path: str) -> pa.Table:
            if not self.done:
                self.done = True
                self.compact()
            self.read.append(Path(path).name)
            return read_part(fs, path)

        monkeypatch.setattr(tables_module, "_part_paths", counting_paths)
        monkeypatch.setattr(tables_module, "_read_part", compacting_read)

    def compact(self) -> None:
        if not (self.results / "tables" / self.name / "part-9.parquet").exists():
            write_compacted(self.results, self.name, ["part-0.parquet", "part-1.parquet"])
        for base in ("part-0.parquet", "part-1.parquet"):
            (self.results / "tables" / self.name / base).unlink()


def test_a_part_that_vanishes_between_listing_and_reading_makes_the_reader_list_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: list[warnings.WarningMessage]
) -> None:
    three_parts(tmp_path, "transfer")
    compaction = Compaction(monkeypatch, tmp_path, "transfer")
    df = load_table(tmp_path, "transfer")
    # The first listing named part-0..2; part-0 and part-1 were gone when read, and the part
    # that holds their rows was not listed: the folder was listed again.
    assert compaction.listings == 2
    assert compaction.read[-2:] == ["part-2.parquet", "part-9.parquet"]
    assert sorted(df["eval_key"]) == [f"eval-{i}" for i in range(6)]
    assert sorted(df["test_acc"]) == [0.1, 0.1, 0.1, 0.2, 0.3, 0.3]
    assert duplicate_warnings(recorded) == []


def test_parts_that_vanish_after_their_compacted_part_was_listed_need_no_second_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_parts(tmp_path, "epochs")
    write_compacted(tmp_path, "epochs", ["part-0.parquet", "part-1.parquet"])
    compaction = Compaction(monkeypatch, tmp_path, "epochs")  # deletes the two on first read
    df = load_table(tmp_path, "epochs")
    assert compaction.listings == 1
    assert sorted(df["epoch"]) == list(range(6))


def test_parts_that_keep_vanishing_are_an_error_after_a_bounded_number_of_listings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_parts(tmp_path, "trials")
    listings = []
    part_paths = tables_module._part_paths

    def counting_paths(fs: pafs.FileSystem, root: str, table: str) -> list[str]:
        listings.append(table)
        return part_paths(fs, root, table)

    def always_gone(fs: pafs.FileSystem, path: str) -> pa.Table:
        if path.endswith("part-1.parquet"):
            raise FileNotFoundError(path)
        return pq.read_table(path, filesystem=fs)

    monkeypatch.setattr(tables_module, "_part_paths", counting_paths)
    monkeypatch.setattr(tables_module, "_read_part", always_gone)
    with pytest.raises(TableChangingError) as info:
        load_table(tmp_path, "trials")
    assert len(listings) == LIST_ATTEMPTS
    message = str(info.value)
    assert f"{tmp_path}/tables/trials" in message and "part-1.parquet" in message
    assert f"each of {LIST_ATTEMPTS} listings" in message and "read the table again" in message


def test_an_object_store_error_counts_as_vanished_only_when_the_part_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyarrow may raise a plain OSError for a missing S3 object (a 403 without list permission).
    three_parts(tmp_path, "fisher")
    write_compacted(tmp_path, "fisher", ["part-0.parquet", "part-1.parquet"])
    folder = tmp_path / "tables" / "fisher"

    def s3_like(fs: pafs.FileSystem, path: str) -> pa.Table:
        if path.endswith("part-0.parquet"):
            raise OSError(f"AWS Error ACCESS_DENIED during GetObject on {path}")
        return pq.read_table(path, filesystem=fs)

    monkeypatch.setattr(tables_module, "_read_part", s3_like)
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        load_table(tmp_path, "fisher")  # part-0 still exists: a real error, raised
    (folder / "part-0.parquet").unlink()
    df = load_table(tmp_path, "fisher")  # gone, and part-9 holds its rows
    assert sorted(df["eval_key"]) == [f"eval-{i}" for i in range(6)]


def test_check_schema_versions_lists_again_when_a_part_vanishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_parts(tmp_path, "robustness")
    read_footer = tables_module._read_footer
    compaction = {"done": False}

    def compacting_footer(fs: pafs.FileSystem, path: str) -> pa.Schema:
        if not compaction["done"]:
            compaction["done"] = True
            write_compacted(tmp_path, "robustness", ["part-0.parquet", "part-1.parquet"])
            for base in ("part-0.parquet", "part-1.parquet"):
                (tmp_path / "tables" / "robustness" / base).unlink()
        return read_footer(fs, path)

    monkeypatch.setattr(tables_module, "_read_footer", compacting_footer)
    assert check_schema_versions(tmp_path, "robustness") == tables_module.KNOWN_SCHEMA_VERSION


@pytest.mark.parametrize("value", [b"part-0.parquet", b'{"a": 1}', b"[1, 2]", b"\xff"])
def test_a_replaces_list_that_is_not_a_list_of_names_is_an_error_naming_the_file(
    tmp_path: Path, value: bytes
) -> None:
    three_parts(tmp_path, "inversion")
    path = write_compacted(tmp_path, "inversion", ["part-0.parquet"], metadata=value)
    with pytest.raises(SchemaVersionError) as info:
        load_table(tmp_path, "inversion")
    assert str(path) in str(info.value)
    assert "not a JSON list of part names" in str(info.value)


def test_a_part_never_replaces_itself(tmp_path: Path) -> None:
    three_parts(tmp_path, "trials")
    names = ["part-0.parquet", "part-1.parquet", "part-9.parquet"]
    write_compacted(tmp_path, "trials", names[:2], metadata=json.dumps(names).encode())
    assert len(load_table(tmp_path, "trials")) == 6


def test_the_compacted_part_helper_writes_the_sink_schema(tmp_path: Path) -> None:
    three_parts(tmp_path, "epochs")
    path = write_compacted(tmp_path, "epochs", ["part-0.parquet"])
    schema = pq.read_schema(path)
    assert schema.remove_metadata().equals(SCHEMAS["epochs"])
    assert json.loads(schema.metadata[REPLACES_KEY]) == ["part-0.parquet"]


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_table_compacted_by_the_sink_reads_each_row_once(
    tmp_path: Path, interrupted: bool, recorded: list[warnings.WarningMessage]
) -> None:
    # The writer side of the protocol, study/sinks/parquet.py's compact_table; interrupted, its
    # replaced parts are still there (put back here, as if it had stopped before deleting).
    from study.sinks.parquet import compact_table

    three_parts(tmp_path, "transfer")
    folder = tmp_path / "tables" / "transfer"
    before = {p.name: p.read_bytes() for p in folder.glob("part-*.parquet")}
    compaction = compact_table(folder, "transfer")
    assert compaction.duplicates == 2
    if interrupted:
        for name, data in before.items():
            (folder / name).write_bytes(data)
    assert len(list(folder.glob("part-*.parquet"))) == (4 if interrupted else 1)
    df = load_table(tmp_path, "transfer")
    assert sorted(df["eval_key"]) == [f"eval-{i}" for i in range(6)]
    assert sorted(df["test_acc"]) == [0.1, 0.1, 0.1, 0.2, 0.3, 0.3]
    assert duplicate_warnings(recorded) == []
