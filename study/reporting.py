"""The report of a study: written from its tables (analysis/), then logged to MLflow.

The report (HTML, markdown, CSV, figures) goes to the study's parent run under report/; each
trial's training curves go to the trial's own run under figures/.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from analysis import load_table, plot_trial_curves, read_study_info, write_report
from analysis.report import REPORT_PACKAGES, Report, software_versions
from study.sinks.mlflow import MlflowSink
from study.sinks.parquet import SCHEMAS, part_files
from trainables import storage


def default_report_dir(results_dir: str, name: str) -> Path:
    """RESULTS/report for a local study; reports/NAME here for one on remote storage."""
    if storage.is_remote(results_dir):
        return Path("reports") / name
    return Path(results_dir) / "report"


INPUTS_FILE = ".inputs.sha256"


def report_inputs(results_dir: str) -> str:
    """A fingerprint of what a report is made of: the names of the tables' part files (a part
    is written once and never changed), the spec and the report's software."""
    parts = sorted(
        f"{table}/{path.rsplit('/', 1)[-1]}"
        for table in SCHEMAS
        for path in part_files(storage.join(results_dir, "tables", table))
    )
    spec = read_study_info(results_dir).get("spec")
    payload = json.dumps([parts, spec, software_versions(REPORT_PACKAGES)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def publish_report(
    results_dir: str,
    out_dir: Path,
    say: Callable[[str], None] = print,
    mlflow: bool = True,
    reuse: bool = False,
) -> Report:
    """Write the report to out_dir and, when the study's MLflow store is known, log it there.

    With reuse, a report written (and logged) from the same inputs is kept as it is.
    """
    inputs = report_inputs(results_dir)
    stamp = out_dir / INPUTS_FILE
    html, markdown = out_dir / "report.html", out_dir / "report.md"
    if reuse and html.is_file() and stamp.is_file() and stamp.read_text() == inputs:
        say("report unchanged: no new rows since it was written")
        return Report(html=html, markdown=markdown)
    report = _write_and_log(results_dir, out_dir, say, mlflow)
    if mlflow:
        stamp.write_text(inputs)
    else:  # not logged: a later `study run` must write and log it again
        stamp.unlink(missing_ok=True)
    return report


def _write_and_log(
    results_dir: str, out_dir: Path, say: Callable[[str], None], mlflow: bool
) -> Report:
    report = write_report(results_dir, out_dir)
    info = read_study_info(results_dir)
    if not (mlflow and info.get("tracking_uri") and info.get("name")):
        return report
    sink = MlflowSink(
        info["tracking_uri"],
        info["name"],
        storage.join(results_dir, "mlartifacts"),
        patience_s=60.0,
    )
    parent = sink.find_run(f"study:{info['name']}")
    if parent is not None:
        for path in sorted(out_dir.iterdir()):
            if path.is_file():
                sink.log_artifact(parent, path, "report")
        sink.client.log_artifacts(parent, str(out_dir / "figures"), "report/figures")
    trials = load_table(results_dir, "trials")
    runs = dict(zip(trials.get("trial_key", []), trials.get("mlflow_run_id", []), strict=True))
    curves = plot_trial_curves(load_table(results_dir, "epochs"), out_dir / "trials")
    for key, png in curves.items():
        if runs.get(key):
            sink.log_artifact(runs[key], png, "figures")
    say("report logged to MLflow: the study run's report/ and each trial run's figures/")
    return report
