"""A study's progress, read from its tables: trials and evaluations done against the spec."""

from __future__ import annotations

from dataclasses import dataclass

from study.sinks.parquet import KEYS, read_table
from study.spec import SweepSpec


@dataclass(frozen=True)
class StudyStatus:
    """How much of a study's grid is in its tables."""

    name: str
    trials_total: int
    trials_done: int
    rows: dict[str, int]


def study_status(spec: SweepSpec) -> StudyStatus:
    """Count the grid's trials already in the trials table, and the rows of every table."""
    tables = spec.results_dir() / "tables"
    keys = {c.key for c in spec.expand()}
    done = set()
    rows: dict[str, int] = {}
    for table in KEYS:
        data = read_table(tables / table, table)
        rows[table] = data.num_rows
        if table == "trials":
            done = set(data.column("trial_key").to_pylist()) & keys
    return StudyStatus(spec.name, len(keys), len(done), rows)


def format_status(status: StudyStatus) -> str:
    """The status as a few lines of text."""
    lines = [f"study {status.name}: {status.trials_done}/{status.trials_total} trials done"]
    lines += [f"  {table}: {n} rows" for table, n in status.rows.items()]
    return "\n".join(lines)
