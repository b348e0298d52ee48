"""Where a study's MLflow UI is, for the lines `study run` prints when it starts and ends.

No mlflow import: the CLI prints these without loading MLflow's client.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

UI_PORT = 5000


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the MLflow UI of a study's store, with this interpreter's own
    mlflow (the virtual environment's, which need not be on PATH); None for a tracking server,
    which serves its own UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    beside = Path(sys.executable).parent / "mlflow"
    mlflow = str(beside) if beside.is_file() else "mlflow"
    return (
        f"{shlex.quote(mlflow)} ui --backend-store-uri {shlex.quote(tracking_uri)} "
        f"--host 127.0.0.1 --port {UI_PORT}"
    )


def ui_address(tracking_uri: str) -> str:
    """Where the UI of a store is: the tracking server itself, else ui_command's."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{UI_PORT}"


def runs_table_url(tracking_uri: str, experiment_id: str) -> str:
    """The address of an experiment's runs table in the MLflow UI of its store. MLflow 3's UI
    opens on its GenAI views (traces, an empty overview) unless told the workflow: the address
    says model training, where the study's run is listed with its trials nested under it."""
    runs = f"{ui_address(tracking_uri)}/#/experiments/{experiment_id}/runs"
    return f"{runs}?workflowType=machine_learning"


def ui_lines(tracking_uri: str, experiment: str, experiment_id: str) -> list[str]:
    """What `study run` prints when it starts, and again when it ends: where the UI is."""
    lines = [f"MLflow: {tracking_uri} (experiment {experiment!r}, id {experiment_id})"]
    command = ui_command(tracking_uri)
    if command is not None:
        lines.append(f"  open the UI: {command}")
    lines.append(f"  the study's runs: {runs_table_url(tracking_uri, experiment_id)}")
    return lines
