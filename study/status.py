"""A study's progress: trials and evaluations done (its tables), running and failed (MLflow),
and which driver holds its lease."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from study.evaluations import evaluation_tables
from study.lease import describe_lease, read_lease
from study.sinks.parquet import KEYS, KeySet, read_key_columns
from study.spec import IMPORTED, SweepSpec
from trainables import storage


@dataclass(frozen=True)
class StudyStatus:
    """How much of a study's grid is in its tables, and the states of its MLflow runs."""

    name: str
    trials_total: int
    trials_done: int
    rows: dict[str, int]
    trial_runs: dict[str, int] = field(default_factory=dict)  # MLflow status -> count
    eval_runs: dict[str, int] = field(default_factory=dict)
    mlflow_error: str | None = None
    lease: str = ""  # who holds the study's lease (study/lease.py describe_lease)


def run_states(spec: SweepSpec) -> tuple[dict[str, int], dict[str, int]]:
    """Counts of the study's trial and evaluation runs by MLflow status (RUNNING, FAILED...)."""
    uri = spec.tracking_uri()
    if uri.startswith("sqlite:///") and not storage.exists(uri.removeprefix("sqlite:///")):
        return {}, {}  # never run: do not create an empty database by looking
    from mlflow.tracking import MlflowClient

    from study.sinks.mlflow import ROLE_TAG, iter_runs

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(spec.name)
    counts: dict[str, Counter[str]] = {"trial": Counter(), "evaluation": Counter()}
    if experiment is None:
        return {}, {}
    for run in iter_runs(client, experiment.experiment_id):
        role = run.data.tags.get(ROLE_TAG)
        if role in counts:
            counts[role][run.info.status] += 1
    return dict(counts["trial"]), dict(counts["evaluation"])


def trials_done(trials: pa.Table, spec: SweepSpec, cells: set[str]) -> int:
    """How many distinct trials of this study the trials table holds (of a grid: its cells; of
    a search: the trials it proposed), counted by pyarrow."""
    column = trials.column("trial_key")
    if spec.search is None:
        mine = pc.is_in(column, value_set=pa.array(sorted(cells), pa.string()))
    else:
        mine = pc.equal(trials.column("proposed_by"), spec.search.proposed_by())
    done = int(pc.count_distinct(column.filter(pc.fill_null(mine, False))).as_py())
    if spec.networks:
        # Imported networks are keyed by their files' checksums, which status does not read:
        # counted by who proposed them (a network whose file changed has an older row too).
        imported = pc.fill_null(pc.equal(trials.column("proposed_by"), IMPORTED), False)
        done += min(len(spec.networks), int(pc.count_distinct(column.filter(imported)).as_py()))
    return done


def study_status(spec: SweepSpec, with_mlflow: bool = True) -> StudyStatus:
    """Count the grid's trials already in the trials table, the rows of every table and, when
    with_mlflow, the study's runs by state."""
    tables = storage.join(spec.results_dir(), "tables")
    cells = {c.key for c in spec.expand()}
    total = spec.trial_count()
    done = 0
    rows: dict[str, int] = {}
    for table, key in KEYS.items():
        # Only the key columns are read (and, of the trials, who proposed each).
        extra = ("proposed_by",) if table == "trials" else ()
        data, unique, _ = read_key_columns(storage.join(tables, table), table, extra)
        rows[table] = len(KeySet(data, tuple(key), unique))
        if table == "trials":
            done = trials_done(data, spec, cells)
    trial_runs: dict[str, int] = {}
    eval_runs: dict[str, int] = {}
    error = None
    if with_mlflow:
        try:
            trial_runs, eval_runs = run_states(spec)
        except Exception as exc:  # a status report must not fail on an unreachable server
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    lease = describe_lease(read_lease(spec.results_dir()), spec.output.lease_timeout_s)
    return StudyStatus(spec.name, total, done, rows, trial_runs, eval_runs, error, lease)


def format_status(status: StudyStatus) -> str:
    """The status as a few lines of text."""
    lines = [f"study {status.name}: {status.trials_done}/{status.trials_total} trials done"]
    if status.lease:
        lines.append(f"  {status.lease}")
    if status.trial_runs or status.eval_runs:
        trials, evals = status.trial_runs, status.eval_runs
        lines.append(
            f"  trials running {trials.get('RUNNING', 0)}, failed {trials.get('FAILED', 0)}, "
            f"killed {trials.get('KILLED', 0)} (MLflow)"
        )
        evals_done = sum(status.rows[t] for t in evaluation_tables())
        lines.append(
            f"  evaluations done {evals_done}, running {evals.get('RUNNING', 0)}, "
            f"failed {evals.get('FAILED', 0)}"
        )
    if status.mlflow_error:
        lines.append(f"  MLflow not read: {status.mlflow_error}")
    lines += [f"  {table}: {n} rows" for table, n in status.rows.items()]
    return "\n".join(lines)
