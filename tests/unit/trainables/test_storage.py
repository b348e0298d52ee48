"""Locations: local paths, file:// and fsspec URIs (memory://) through one set of helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from study.sinks.parquet import ParquetSink, read_table
from study.spec import SweepSpec, format_validation_error
from trainables import storage

pytestmark = pytest.mark.unit


def test_paths_and_uris_are_told_apart_and_joined() -> None:
    assert not storage.is_uri("results/x") and storage.is_uri("s3://b/k")
    assert storage.is_remote("s3://b/k") and not storage.is_remote("file:///tmp/x")
    assert storage.join("s3://b/k/", "tables", "trials") == "s3://b/k/tables/trials"
    assert storage.join("/tmp/r", "tables") == "/tmp/r/tables"


def test_a_file_uri_results_dir_is_a_local_path(tmp_path: Path) -> None:
    spec = SweepSpec.model_validate(
        {
            "name": "n",
            "grid": {"sources": ["digits"], "archs": ["small_cnn"], "norms": ["l2"]}
            | {"eps": [0.0], "seeds": [0]},
            "output": {"results_dir": f"file://{tmp_path}/r"},
        }
    )
    assert spec.results_dir() == str(tmp_path / "r")
    assert spec.tracking_uri() == f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}"


def test_an_fsspec_filesystem_holds_a_table() -> None:
    tables = "memory://atsweep-test/tables"
    sink = ParquetSink(tables)
    assert sink.append("epochs", [{"trial_key": "a", "epoch": 0}]) == 1
    assert ParquetSink(tables).has("epochs", "a", 0)
    assert read_table(storage.join(tables, "epochs"), "epochs").num_rows == 1
    storage.write_bytes("memory://atsweep-test/x/y.txt", b"hello")
    copy = storage.local_copy("memory://atsweep-test/x")
    assert (copy / "y.txt").read_bytes() == b"hello"
    fs, path = storage.resolve("memory://atsweep-test/x/y.txt")
    assert storage.read_bytes(storage.to_location(fs, path)) == b"hello"


def spec_error(output: dict[str, str]) -> str:
    grid = {"sources": ["digits"], "archs": ["small_cnn"], "norms": ["l2"], "eps": [0.0]}
    with pytest.raises(ValidationError) as err:
        SweepSpec.model_validate({"name": "n", "grid": grid | {"seeds": [0]}, "output": output})
    return format_validation_error(err.value)


def test_an_unknown_scheme_is_a_spec_error_naming_the_field() -> None:
    line = spec_error({"results_dir": "foo://x"})
    assert line.startswith("output.results_dir = 'foo://x': no filesystem for foo://")


def test_an_s3_results_dir_needs_a_tracking_uri() -> None:
    line = spec_error({"results_dir": "s3://b/p"})
    assert line.startswith("output.tracking_uri = None: results_dir is a URI")
