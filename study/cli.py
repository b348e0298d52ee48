"""The `study` command: validate a sweep spec, run it on Ray, report its trade-off table.

A spec error prints one line (field, value, fix) and exits 2 before Ray or MLflow is touched and
before anything is written; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from study.mlflow_ui import ui_lines
from study.spec import SpecError, SweepSpec, load_spec
from trainables import storage
from trainables.catalog import DataMissingError
from trainables.config import LoadRequest, TrainConfig

if TYPE_CHECKING:
    from study.networks import Network
    from study.recorder import StudySummary


def _print_search(spec: SweepSpec) -> None:
    se = spec.search
    assert se is not None
    objectives = ", ".join(f"{o.metric} ({o.direction})" for o in se.objectives)
    space = se.space.model_dump(exclude_none=True, mode="json")
    print(f"study {spec.name}: Optuna search, {se.num_trials} trials ({se.max_concurrent} at once)")
    print(f"sampler: {se.sampler_class()} (seed {se.sampler_seed}); objectives: {objectives}")
    print(f"space: {space}; source {se.source.to_ref().id}, seed {se.seed}")
    print(f"early stopping: {se.early_stopping.method}; Optuna storage: {spec.optuna_storage()}")
    _print_evaluations(spec, spec.base_config(), "evaluations of each trained network:")
    _print_baselines(spec)
    print(f"results: {spec.results_dir()}   MLflow: {spec.tracking_uri()}")


def _print_trials(spec: SweepSpec) -> None:
    if spec.search is not None:
        _print_search(spec)
        return
    networks: list[Network] = []
    if spec.networks:
        from study.networks import resolve_networks
        from study.runner import load_request

        # Every network's file is found and loaded onto its arch before anything is printed: a
        # bad entry is one line and exit 2.
        networks = resolve_networks(spec, load_request(spec), check=True)
    configs = spec.expand()
    imported = [n.config for n in networks]
    counted = f"{len(configs)} trials" + (
        f", {len(imported)} imported networks" if imported else ""
    )
    print(f"study {spec.name}: {counted}")
    rows = [
        [str(i), c.key, c.source.id, c.arch.id, c.norm, c.attack_id, f"{c.eps:.4g}", str(c.seed)]
        for i, c in enumerate([*configs, *imported])
    ]
    headers = ["#", "trial_key", "source", "arch", "norm", "attack", "eps", "seed"]
    if imported:
        headers.append("imported from")
        for row, network in zip(rows[len(configs) :], networks, strict=True):
            row.append(f"{network.entry.label()} ({network.location})")
        for row in rows[: len(configs)]:
            row.append("")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    # The table in one write (a grid has 10,000 lines; a terminal flushes each print).
    table = (
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )
    sys.stdout.write("\n".join(table) + "\n")
    if configs:
        _print_evaluations(spec, configs[0], "evaluations of each trained network:")
    if imported:
        _print_evaluations(spec, imported[0], "evaluations of each imported network:")
    _print_baselines(spec, tuple(imported))
    print(f"results: {spec.results_dir()}   MLflow: {spec.tracking_uri()}")


def _print_evaluations(spec: SweepSpec, cfg: TrainConfig, title: str) -> None:
    """How many evaluations of each kind a network gets."""
    from study.plan import plan_trial_evaluations

    _print_counts(title, plan_trial_evaluations(spec, cfg, "", "", LoadRequest()))


def _print_baselines(spec: SweepSpec, networks: tuple[TrainConfig, ...] = ()) -> None:
    from study.plan import plan_baselines

    _print_counts("evaluations once per study:", plan_baselines(spec, LoadRequest(), networks))


def _print_counts(title: str, planned: Sequence[object]) -> None:
    from study.evaluations import EVALUATIONS

    counts = Counter(p.task.kind for p in planned)  # type: ignore[attr-defined]
    print(f"{title} {'none' if not counts else ''}".rstrip())
    for kind, n in counts.items():
        entry = EVALUATIONS[kind]
        print(f"  {kind:<18} {n:>3}  {entry.section:<33} {entry.description}")


def check_cluster(spec: SweepSpec, cluster: str | None) -> None:
    """With --cluster, reject resource requests that no node type of that cluster.yaml holds."""
    if cluster:
        from study.resources import check_resources, node_types_from_yaml

        check_resources(spec.resources, node_types_from_yaml(cluster), cluster)


def cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    check_cluster(spec, args.cluster)
    _print_trials(spec)
    return 0


def _shares(training: float, evaluations: float) -> str:
    """' (training x%, evaluations y%)', each part only where it was measured."""
    parts = [
        f"{name} {100 * share:.2f}%"
        for name, share in (("training", training), ("evaluations", evaluations))
        if not math.isnan(share)
    ]
    return f" ({', '.join(parts)})" if parts else ""


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    from study.progress import make_view
    from study.runner import Study
    from study.signals import Interrupted, interruptible

    if args.progress_every <= 0:
        raise SpecError(
            f"--progress-every {args.progress_every:g}: the seconds between status lines must be "
            "positive (or use --quiet for none)"
        )
    view = make_view("quiet" if args.quiet else args.progress, print, args.progress_every)
    try:
        with interruptible(), Study(spec, view=view) as study:
            summary = study.run(address=args.address, spec_path=Path(args.spec))
            _print_run(spec, summary)
            if not args.no_report:
                from study.reporting import default_report_dir, publish_report

                # A re-run that added no row keeps the report it finds (`study report` rewrites).
                results = spec.results_dir()
                report = publish_report(results, default_report_dir(results, spec.name), reuse=True)
                print(f"report: {report.html.resolve()}")
    except Interrupted as stop:
        if stop.unfinished is None:
            what = "before the study's runs were opened"
        else:
            trials, evals = stop.unfinished
            what = f"{trials} trials and {evals} evaluations unfinished"
        print(
            f"study: interrupted by {stop.name}: {what}; `study run {args.spec}` resumes it",
            file=sys.stderr,
        )
        return stop.exit_code
    return 1 if summary.failures else 0


def _print_run(spec: SweepSpec, summary: StudySummary) -> None:
    """The closing lines of a study run: the trade-off table, the counts, where things are."""
    from analysis import format_tradeoff, tradeoff_table

    results = spec.results_dir()
    print()
    print(format_tradeoff(tradeoff_table(results)))
    print()
    print(
        f"done in {summary.wall_time_s:.0f} s: trials {summary.trials_done} run, "
        f"{summary.trials_cached} cached, {summary.trials_failed} failed; evaluations "
        f"{summary.evals_done} run, {summary.evals_cached} cached, {summary.evals_failed} failed"
    )
    if summary.trial_time_s + summary.eval_time_s > 0:
        print(
            f"logging: MLflow {summary.mlflow_s:.1f} s, parquet {summary.parquet_s:.1f} s = "
            f"{100 * summary.logging_share:.2f}% of the {summary.trial_time_s:.0f} s of "
            f"training and {summary.eval_time_s:.0f} s of evaluations"
            + _shares(summary.trial_logging_share, summary.eval_logging_share)
        )
    for failure in summary.failures:
        print(f"  failed: {failure}")
    print(
        f"parquet tables: {storage.join(results, 'tables')}  (pandas.read_parquet on each folder)"
    )
    for line in ui_lines(spec.tracking_uri(), spec.name, summary.experiment_id):
        print(line)


SUBMIT_EXCLUDES = [".venv", ".git", "results", "data", "mlruns", "*.parquet", "*.safetensors"]


def cmd_submit(args: argparse.Namespace) -> int:
    """Send `study run SPEC --address auto` to a cluster as a Ray job (the Jobs SDK)."""
    spec = load_spec(args.spec)
    check_cluster(spec, args.cluster)
    from ray.job_submission import JobSubmissionClient

    spec_path = Path(args.spec).resolve()
    try:
        relative = spec_path.relative_to(Path.cwd())
    except ValueError as exc:
        raise SpecError(
            f"spec {str(spec_path)!r} is outside the working directory {Path.cwd()} that is "
            "uploaded with the job: run study submit from the folder that holds it"
        ) from exc
    from study.provenance import COMMIT_ENV, DIRTY_ENV, code_state

    # The upload has no .git: the job learns the project's commit from the submitter.
    code = code_state()
    env_vars = {COMMIT_ENV: code["git_commit"], DIRTY_ENV: code["git_dirty"]}
    client = JobSubmissionClient(args.address)
    deadline = time.monotonic() + 120
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=f"study run {shlex.quote(str(relative))} --address auto",
                runtime_env={
                    "working_dir": ".",
                    "excludes": SUBMIT_EXCLUDES,
                    "env_vars": env_vars,
                },
                metadata={
                    "atsweep.study": spec.name,
                    "atsweep.results_dir": spec.results_dir(),
                    "atsweep.git_commit": code["git_commit"],
                },
            )
            break
        except RuntimeError as exc:
            # A cluster that has just started has no job agent for a few seconds.
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    print(job_id)
    print(f"follow it: ray job logs --address {args.address} --follow {job_id}")
    print(f"progress:  study status {args.spec} --address {args.address}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """A study's progress from its tables, and its Ray jobs when --address is given."""
    from study.status import format_status, study_status

    spec = load_spec(args.spec)
    if args.watch:
        try:
            watch_status(spec, args.interval)
        except KeyboardInterrupt:
            print("stopped watching (the study goes on)")
    else:
        print(format_status(study_status(spec)))
    if args.address:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(args.address)
        jobs = [
            j for j in client.list_jobs() if (j.metadata or {}).get("atsweep.study") == spec.name
        ]
        for job in sorted(jobs, key=lambda j: j.start_time or 0):
            print(f"job {job.submission_id}: {job.status}  {job.message or ''}".rstrip())
        if not jobs:
            print(f"no Ray job of study {spec.name} on {args.address}")
    return 0


def watch_status(spec: SweepSpec, interval_s: float) -> None:
    """The status again every interval_s seconds until the study ends: its driver released the
    lease (or stopped renewing it) after holding it during the watch, or every trial is done
    and no driver holds it. On a terminal each view replaces the last."""
    from study.lease import read_lease
    from study.status import format_status, study_status

    terminal = sys.stdout.isatty()
    seen_live = False
    while True:
        status = study_status(spec)
        record = read_lease(spec.results_dir())
        live = (
            record is not None
            and record.released_at is None
            and record.age_s(time.time()) <= spec.output.lease_timeout_s
        )
        seen_live = seen_live or live
        text = format_status(status)
        stamp = time.strftime("%H:%M:%S")
        if terminal:
            print(f"\x1b[2J\x1b[H{stamp}  (refreshed every {interval_s:g} s)\n{text}", flush=True)
        else:
            print(f"--- {stamp}\n{text}", flush=True)
        if not live and (seen_live or status.trials_done >= status.trials_total):
            return
        if not live and not seen_live:
            print("  waiting for a driver to start the study (Ctrl-C to stop watching)")
        time.sleep(interval_s)


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge each table's parts into one (each key once, the current schema), under the lease."""
    from analysis import read_study_info
    from study.lease import StudyLease
    from study.signals import interruptible
    from study.sinks.parquet import ParquetSink

    results = _results_with_tables(args.results_dir)
    timeout = read_study_info(results).get("spec", {}).get("output", {}).get("lease_timeout_s")
    lease = StudyLease(results, float(timeout or 120.0))
    with interruptible():
        lease.acquire()
        try:
            for done in ParquetSink(storage.join(results, "tables")).compact():
                print(
                    f"{done.table}: {done.parts_before} parts -> "
                    f"{1 if done.changed else done.parts_before}, {done.rows} rows"
                    + (f", {done.duplicates} repeated rows removed" if done.duplicates else "")
                )
        finally:
            lease.release()
    return 0


def _results_with_tables(results: str) -> str:
    if not storage.is_dir(storage.join(results, "tables")):
        raise SpecError(
            f"results_dir {str(results)!r} has no tables/ folder: pass the folder a study wrote "
            "(output.results_dir, default results/NAME)"
        )
    return results


def cmd_report(args: argparse.Namespace) -> int:
    """The trade-off table, then the report (HTML, markdown, figures), logged to MLflow."""
    from analysis import format_tradeoff, read_study_info, tradeoff_table
    from study.reporting import default_report_dir, publish_report

    results = _results_with_tables(args.results_dir)
    print(format_tradeoff(tradeoff_table(results)))
    name = read_study_info(results).get("name") or Path(str(results).rstrip("/")).name
    out = Path(args.out) if args.out else default_report_dir(results, name)
    report = publish_report(results, out, mlflow=not args.no_mlflow)
    print(f"report: {report.html.resolve()}  (markdown: {report.markdown.resolve()})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of a sweep spec (for an editor's YAML support)."""
    from study.schema import spec_json_schema

    text = json.dumps(spec_json_schema(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def package_version() -> str:
    """The installed package's version (its metadata: what pip installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atsweep")
    except PackageNotFoundError:
        return "unknown (not installed: run `make install` or `pip install -e .`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study",
        description="Adversarial-training sweeps on Ray Tune, logged to MLflow and parquet.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"atsweep {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a spec and print its expanded trials")
    p.add_argument("spec")
    p.add_argument("--cluster", help="a cluster.yaml whose node types must fit the requests")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser(
        "run", help="run a study (resumes: cached trials and evaluations are skipped)"
    )
    p.add_argument("spec")
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: start a local Ray)"
    )
    p.add_argument(
        "--no-report", action="store_true", help="skip the report (write it later: study report)"
    )
    p.add_argument(
        "--progress",
        choices=["auto", "live", "plain", "quiet"],
        default="auto",
        help="live: a panel redrawn in place; plain: a line per epoch and a status line every "
        "--progress-every seconds; auto (default): live on a terminal, else plain",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display (--progress quiet)")
    p.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between the plain status lines (default 30)",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("submit", help="send a study to a Ray cluster as a job")
    p.add_argument("spec")
    p.add_argument("--address", required=True, help="the cluster's dashboard, http://HEAD:8265")
    p.add_argument("--cluster", help="the cluster.yaml: check the requests before sending")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("status", help="trials and evaluations done, and the study's Ray jobs")
    p.add_argument("spec")
    p.add_argument("--watch", action="store_true", help="refresh until the study ends")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    p.add_argument("--address", default=None, help="the cluster's dashboard, http://HEAD:8265")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "report", help="the trade-off table, and an HTML/markdown report with figures and claims"
    )
    p.add_argument("results_dir")
    p.add_argument("--out", help="report folder (default RESULTS_DIR/report)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "compact", help="merge each table's parts into one (study run does it when it ends)"
    )
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_compact)
    p = sub.add_parser("schema", help="print the JSON Schema of a sweep spec, for editors")
    p.add_argument("--out", help="write it to this file instead")
    p.set_defaults(func=cmd_schema)
    return parser


def is_input_error(exc: BaseException) -> bool:
    """An error in what the user gave (spec, data, tables), whose message says the fix: printed
    as one line. The table errors are looked up only where their modules were loaded."""
    kinds: list[type[BaseException]] = [SpecError, DataMissingError]
    for module, name in (
        ("analysis.tables", "SchemaVersionError"),
        ("analysis.tables", "TableChangingError"),
        ("study.sinks.parquet", "SchemaConflictError"),
        ("study.lease", "LeaseHeldError"),
        ("study.lease", "LeaseLostError"),
    ):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(exc, tuple(kinds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:
        if args.debug or not is_input_error(exc):
            raise
        print(f"study: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `study` console script: main(), then exit.

    Objects still alive at exit (torch, Ray, MLflow and matplotlib's, a few million) are moved
    out of the garbage collector's reach first: the interpreter's last collections walked them
    for about a second after a `study run`. Exit handlers (Ray's shutdown) still run, and every
    file the command wrote is closed by then."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
