"""Run a study from Python (a notebook) and get its summary and tables back.

    from study.notebook import run_study

    result = run_study("sweeps/demo.yaml", {"grid.seeds": [0], "training.epochs": 5})
    result.summary.trials_done, result.tradeoff, result.tables["transfer"]

The spec may be a path, a dict (the YAML's content) or a SweepSpec; overrides are dotted keys
set on it before validation, so a misspelt one is the same one-line SpecError as in a file. The
study runs as `study run` would (local Ray, or `address`), resumes what is cached, and returns
a StudyResult.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from study.recorder import StudySummary
from study.spec import SpecError, SweepSpec, format_validation_error, load_spec

SpecLike = str | Path | Mapping[str, Any] | SweepSpec


@dataclass
class StudyResult:
    """What run_study did and the study's tables (each table's every row, as load_tables)."""

    spec: SweepSpec
    summary: StudySummary
    results_dir: str
    tables: dict[str, pd.DataFrame]
    tradeoff: pd.DataFrame
    report: Path | None = None


def spec_from(spec: SpecLike, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """A validated SweepSpec from a path, a dict or a SweepSpec, with dotted-key overrides
    ({"training.epochs": 5, "grid.eps": [0, "8/255"]}) applied first."""
    if isinstance(spec, SweepSpec):
        raw: dict[str, Any] = spec.model_dump(mode="json", exclude_unset=True)
        where = f"spec {spec.name!r}"
    elif isinstance(spec, Mapping):
        raw, where = copy.deepcopy(dict(spec)), "spec"
    else:
        path = Path(spec)
        if not overrides:
            return load_spec(path)
        load_spec(path)  # the file's own errors first, naming the file
        raw, where = yaml.safe_load(path.read_text()), str(path)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = str(dotted).split(".")
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {} if child is None else child
            if not isinstance(child, dict):
                raise SpecError(
                    f"override {dotted!r}: {key!r} is {child!r}, not a section: override it "
                    "whole or a key of a section"
                )
            node = child
        node[last] = value
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{where}: {format_validation_error(exc)}") from exc


def run_study(
    spec: SpecLike,
    overrides: Mapping[str, Any] | None = None,
    *,
    address: str | None = None,
    report: bool = False,
    printer: Callable[[str], None] = print,
    progress: str = "plain",
) -> StudyResult:
    """Run (or resume) a study and return its summary and tables; report=True also writes the
    HTML report (RESULTS_DIR/report), as `study run` does. progress: plain (a line per epoch
    and a status line every 30 s, through printer), live, or quiet."""
    from analysis import load_tables, tradeoff_table
    from study.progress import make_view
    from study.runner import Study

    resolved = spec_from(spec, overrides)
    spec_path = Path(spec) if isinstance(spec, (str, Path)) else None
    with Study(resolved, printer, make_view(progress, printer)) as study:
        summary = study.run(address=address, spec_path=spec_path)
    results = resolved.results_dir()
    written = None
    if report:
        from study.reporting import default_report_dir, publish_report

        written = publish_report(results, default_report_dir(results, resolved.name)).html
    return StudyResult(
        spec=resolved,
        summary=summary,
        results_dir=results,
        tables=load_tables(results),
        tradeoff=tradeoff_table(results),
        report=written,
    )
