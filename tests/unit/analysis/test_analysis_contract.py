"""The analysis reads only what study's parquet sink writes: column names and schema version."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from analysis import figures, stats, tables
from study.evaluations import EVAL_TABLES
from study.sinks.parquet import SCHEMA_VERSION, SCHEMAS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def test_analysis_knows_the_sinks_schema_version() -> None:
    assert tables.KNOWN_SCHEMA_VERSION == SCHEMA_VERSION, (
        "study/sinks/parquet.py changed SCHEMA_VERSION: check the analysis against the new "
        "schemas, then update KNOWN_SCHEMA_VERSION in analysis/tables.py"
    )
    # The name analysis/stats.py re-exports is the same number.
    assert stats.KNOWN_SCHEMA_VERSION == tables.KNOWN_SCHEMA_VERSION


def test_every_table_analysis_loads_is_a_sink_table() -> None:
    # The sink writes trials and epochs, and a table per evaluation table of the registry.
    assert set(SCHEMAS) == {"trials", "epochs", *EVAL_TABLES}
    assert set(stats.COLUMNS_READ) == set(SCHEMAS)
    assert set(tables.TABLES) == set(SCHEMAS)


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_every_column_analysis_reads_is_declared_in_the_schema(table: str) -> None:
    missing = set(stats.COLUMNS_READ[table]) - set(SCHEMAS[table].names)
    assert not missing, f"analysis reads {sorted(missing)} from {table}, which the schema lacks"


def test_the_grid_columns_analysis_groups_by_are_read_from_every_evaluation_table() -> None:
    grouped = {*stats.GRID, *tables.GROUP, *figures.PANEL}
    for table in ("trials", *EVAL_TABLES):
        assert grouped <= set(stats.COLUMNS_READ[table]), table


def test_columns_read_by_subscript_are_declared_in_columns_read() -> None:
    # A df["name"] in analysis/ naming a sink column must be listed in COLUMNS_READ, so that the
    # schema test above covers it (names analysis makes itself, such as "mean", are not columns).
    columns = set().union(*(schema.names for schema in SCHEMAS.values()))
    declared = set().union(*stats.COLUMNS_READ.values())
    for path in sorted((ROOT / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str)
                and node.slice.value in columns
            ):
                assert node.slice.value in declared, (
                    f"{path.name}:{node.lineno} reads {node.slice.value!r}: add it to "
                    "COLUMNS_READ in analysis/stats.py"
                )
