"""Dependencies point one way: study -> trainables; analysis reads parquet only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[path] = names
    return found


def test_trainables_never_imports_study_analysis_or_storage() -> None:
    forbidden = {"study", "analysis", "mlflow", "pyarrow", "optuna", "pandas"}
    for path, names in imported_modules("trainables").items():
        # storage.py reaches checkpoints on s3:// and other URIs through pyarrow's filesystems.
        allowed = {"pyarrow"} if path.name == "storage.py" else set()
        bad = names & (forbidden - allowed)
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_tune_entry_imports_ray() -> None:
    for path, names in imported_modules("trainables").items():
        if path.name != "tune_entry.py":
            assert "ray" not in names, f"{path.relative_to(ROOT)} imports ray"


def test_analysis_reads_parquet_only() -> None:
    forbidden = {"torch", "ray", "mlflow", "trainables", "study", "optuna"}
    for path, names in imported_modules("analysis").items():
        assert not names & forbidden, f"{path.relative_to(ROOT)} imports {names & forbidden}"


def test_nothing_below_study_imports_it_and_study_imports_analysis_only_for_the_report() -> None:
    for package in ("trainables", "analysis"):
        for path, names in imported_modules(package).items():
            assert "study" not in names, f"{path.relative_to(ROOT)} imports study"
    # The report (study/reporting.py), the trade-off table `study run` and `study report` print
    # (cli.py), the software versions in study.json that the report shows (recorder.py), and
    # the tables the notebook entry point hands back (notebook.py).
    report_writers = {"reporting.py", "cli.py", "recorder.py", "notebook.py"}
    for path, names in imported_modules("study").items():
        if path.name not in report_writers:
            assert "analysis" not in names, f"{path.relative_to(ROOT)} imports analysis"
