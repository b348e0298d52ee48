"""Scale benchmarks: what the driver costs as a study grows (issue goals in brackets).

1. Sink scale                                                        (to come: not measured yet)
2. Per-cell driver overhead of a real study at 10 and 200 cells      (to come: not measured yet)
3. Planning and validating a 10,000-cell grid (4 archs x 25 eps x 10 seeds x 10 digits class
   subsets, 3 transfer targets, Fisher, robustness at 3 radii with AutoAttack, 2 inversions:
   12 evaluations a cell), the spec generated here, never committed:
   - `study validate SPEC` wall time, a fresh process (the venv's console script, imports
     included), the median of --repeats runs                                          [< 5 s]
   - planning every cell's evaluations in this process (expand, then plan_trial_evaluations of
     each cell with its first read of the trial_key, then the study's baselines), the median of
     --repeats runs, per cell and per evaluation                                    [reported]

Each section is a function called from main() that returns its numbers (and the goals it
checks); the figures of a section are measured in the same run, side by side. A goal missed
prints NOT MET and the script still exits 0.

Run: .venv/bin/python benchmarks/bench_scale.py [--only 3] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Importable as a script (benchmarks/ is not a package): the project's modules from the tree.
sys.path.insert(0, str(ROOT))


@dataclass
class Goal:
    """One checked figure: its label, value, the bound and whether lower is better."""

    label: str
    value: float
    bound: float
    unit: str = "s"

    @property
    def met(self) -> bool:
        return self.value < self.bound


@dataclass
class Section:
    """What a section measured: its numbers (for --json), its goals and lines to print."""

    numbers: dict[str, Any]
    goals: list[Goal] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


# ----- 1. sink scale (to come) --------------------------------------------------------------------
# def sink_scale(args: argparse.Namespace, work: Path) -> Section: ...


# ----- 2. per-cell driver overhead of a real study at 10 and 200 cells (to come) ------------------
# def driver_overhead(args: argparse.Namespace, work: Path) -> Section: ...


# ----- 3. planning and validating a 10,000-cell grid ----------------------------------------------
GRID_ARCHS: list[Any] = [
    "small_cnn",
    {"name": "small_cnn", "width": 0.5},
    "resnet18",
    "preact_resnet18",
]
GRID_EPS = [round(0.05 * i, 2) for i in range(25)]
GRID_SEEDS = list(range(10))
# Ten distinct sources: digits restricted to three consecutive classes (0-1-2, 1-2-3, ... 9-0-1).
GRID_SOURCES = [
    {"dataset": "digits", "classes": [i, (i + 1) % 10, (i + 2) % 10]} for i in range(10)
]
VALIDATE_GOAL_S = 5.0


def grid_spec(results_dir: Path) -> dict[str, Any]:
    """A 10,000-cell grid of datasets and models that exist, every evaluation kind on."""
    return {
        "name": "scale10k",
        "description": "bench_scale.py: 10,000 cells to plan and validate (never run)",
        "grid": {
            "sources": GRID_SOURCES,
            "archs": GRID_ARCHS,
            "norms": ["l2"],
            "eps": GRID_EPS,
            "seeds": GRID_SEEDS,
        },
        "training": {"epochs": 2, "batch_size": 32},
        "evaluations": {
            "transfer": {
                "targets": [
                    {"dataset": "digits", "classes": [5, 6, 7, 8, 9]},
                    {"dataset": "digits", "classes": [0, 1, 2, 3, 4]},
                    "digits",
                ]
            },
            "fisher": {"enabled": True},
            "robustness": {"enabled": True, "eps": [0.5, 1.0, "standard"], "autoattack": True},
            "inversion": {"enabled": True},
        },
        "output": {"results_dir": str(results_dir)},
    }


def time_validate(spec: Path, out: Path) -> float:
    """Wall time of `study validate SPEC` as a fresh process, its table written to out."""
    start = time.perf_counter()
    with out.open("w") as handle:
        proc = subprocess.run(
            [str(BIN / "study"), "validate", str(spec)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            check=False,
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"study validate {spec} exited {proc.returncode}: see {out}")
    return wall


def time_planning(spec_path: Path) -> dict[str, float]:
    """Expand the grid and plan every cell's evaluations (and the baselines) in this process."""
    from study.plan import plan_baselines, plan_trial_evaluations
    from study.spec import load_spec
    from trainables.config import LoadRequest

    spec = load_spec(spec_path)
    load, results = LoadRequest(), spec.results_dir()
    start = time.perf_counter()
    configs = spec.expand()
    expanded = time.perf_counter()
    evaluations = sum(
        len(plan_trial_evaluations(spec, cfg, f"{results}/checkpoints/{cfg.key}", results, load))
        for cfg in configs
    )
    planned = time.perf_counter()
    baselines = len(plan_baselines(spec, load))
    done = time.perf_counter()
    return {
        "cells": len(configs),
        "evaluations": evaluations,
        "baselines": baselines,
        "expand_s": expanded - start,
        "plan_s": planned - expanded,
        "baselines_s": done - planned,
    }


def grid_scale(args: argparse.Namespace, work: Path) -> Section:
    """3. `study validate` of a 10,000-cell grid, and planning every cell's evaluations."""
    spec = work / "scale10k.yaml"
    spec.write_text(yaml.safe_dump(grid_spec(work / "results")))
    validate: list[float] = []
    planning: list[dict[str, float]] = []
    for i in range(args.repeats):
        print(f"  study validate, run {i + 1} of {args.repeats} ...", flush=True)
        validate.append(time_validate(spec, work / "validate.out"))
        print(f"    {validate[-1]:.2f} s\n  planning, run {i + 1} ...", flush=True)
        planning.append(time_planning(spec))
        print(f"    {planning[-1]['plan_s']:.2f} s", flush=True)
    table = (work / "validate.out").read_text().splitlines()
    runs = [p["expand_s"] + p["plan_s"] + p["baselines_s"] for p in planning]
    last = planning[-1]
    cells, evaluations = int(last["cells"]), int(last["evaluations"])
    validate_s, planning_s = statistics.median(validate), statistics.median(runs)
    plan_s = statistics.median(p["plan_s"] for p in planning)
    numbers = {
        "cells": cells,
        "evaluations": evaluations,
        "baselines": int(last["baselines"]),
        "validate_s": validate_s,
        "validate_runs_s": validate,
        "validate_lines": len(table),
        "planning_s": planning_s,
        "planning_runs_s": runs,
        "expand_s": statistics.median(p["expand_s"] for p in planning),
        "plan_trial_evaluations_s": plan_s,
        "baselines_s": statistics.median(p["baselines_s"] for p in planning),
        "plan_per_cell_ms": 1e3 * plan_s / cells,
        "plan_per_evaluation_us": 1e6 * plan_s / evaluations,
        "validate_per_cell_ms": 1e3 * validate_s / cells,
    }
    if cells != 10_000 or not any(
        line.startswith(f"study scale10k: {cells} trials") for line in table
    ):
        raise SystemExit(f"the grid has {cells} cells, not 10,000: see {work / 'validate.out'}")
    lines = [
        f"grid: {cells} cells, {evaluations} evaluations ({evaluations / cells:g} a cell), "
        f"{numbers['baselines']} baselines; validate printed {len(table)} lines",
        f"study validate {validate_s:.2f} s (median of "
        f"{', '.join(f'{t:.2f}' for t in validate)} s) = "
        f"{numbers['validate_per_cell_ms']:.3f} ms a cell",
        f"planning {planning_s:.2f} s (median of {', '.join(f'{t:.2f}' for t in runs)} s): "
        f"expand {numbers['expand_s']:.2f} s, every cell's evaluations {plan_s:.2f} s "
        f"({numbers['plan_per_cell_ms']:.3f} ms a cell, {numbers['plan_per_evaluation_us']:.1f} us "
        f"an evaluation), baselines {numbers['baselines_s']:.2f} s; "
        f"planning / validate {planning_s / validate_s:.2f}x",
    ]
    goals = [Goal("study validate, 10,000 cells (s)", validate_s, VALIDATE_GOAL_S)]
    return Section(numbers, goals, lines)


# The sections main() runs, by number (--only picks some); sections 1 and 2 go here when they
# are written, as functions of (args, work) -> Section like grid_scale.
SECTIONS: dict[str, tuple[str, Callable[[argparse.Namespace, Path], Section]]] = {
    "3": ("Planning and validating a 10,000-cell grid", grid_scale),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(SECTIONS),
        help="run only these sections (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing (median)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="keep the generated spec and outputs here")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="atsweep-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()}",
        "sections": {},
    }
    report: list[str] = []
    try:
        for number in sorted(args.only or SECTIONS):
            title, run = SECTIONS[number]
            print(f"{number}. {title} ...", flush=True)
            section = run(args, work)
            result["sections"][number] = {"title": title, **section.numbers}
            report += ["", f"{number}. {title}", *(f"   {line}" for line in section.lines)]
            for goal in section.goals:
                verdict = "MET" if goal.met else "NOT MET"
                report.append(
                    f"   {goal.label:<40} {goal.value:>8.3f}   goal < {goal.bound:g} {goal.unit}"
                    f"   {verdict}"
                )
                result["sections"][number].setdefault("goals", {})[goal.label] = {
                    "value": goal.value,
                    "bound": goal.bound,
                    "met": goal.met,
                }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
