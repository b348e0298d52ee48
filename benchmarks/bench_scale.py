"""Scale benchmarks: what the driver costs as a study grows (issue goals in brackets).

1. The sinks at 10, 1,000 and 50,000 evaluation rows, written as a study writes them (through
   ParquetSink, a flush of 10 rows at a time: one part per flush, with a trials row for every
   5 evaluations, and a table compacted once it has COMPACT_AFTER_PARTS parts, as the recorder
   does): the time to open the study's tables (ParquetSink, which reads their key columns),
   of its first key lookup (which builds the transfer table's key set, reported) and of
   `study status` (in this process, and as a fresh process), before and after the compaction
   that ends a study run (each the median of 3)
     - after compaction, at 50,000 rows: open and status                              [< 2 s]
     - after compaction, growth of open and status from 1,000 to 50,000 rows           [< 3x]
2. A real `study run` of trivially small trainings (digits, one epoch, 5 images a class, no
   evaluations) at 10, 50 and 200 cells: the driver's time beyond the trainings, wall time minus
   the trainings' time over the 2 trial slots. Its fixed part and its cost per cell come from
   the three sizes (cost per cell = the slope between two sizes)
     - overhead per cell at 200 cells over that at 10 (fixed part included)          [<= 1.2x]
     - cost per added cell between 50 and 200 over that between 10 and 50            [<= 1.2x]
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

    at_most: bool = False  # the bound itself still meets the goal (<=)

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.at_most else self.value < self.bound


@dataclass
class Section:
    """What a section measured: its numbers (for --json), its goals and lines to print."""

    numbers: dict[str, Any]
    goals: list[Goal] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


# ----- 1. sink scale ---------------------------------------------------------------------------
SINK_ROWS = (10, 1_000, 50_000)
ROWS_PER_FLUSH = 10
SINK_GOAL_S, SINK_GROWTH_GOAL = 2.0, 3.0


def transfer_row(i: int) -> dict[str, Any]:
    return {
        "eval_key": f"e{i:08d}",
        "trial_key": f"t{i // 5:08d}",
        "kind": "probe",
        "source": "digits-c01234",
        "arch": "small_cnn",
        "norm": "l2",
        "attack": "pgd7",
        "eps": 0.01 * (i % 100),
        "seed": i % 10,
        "target": "digits-c56789",
        "test_acc": 0.5,
        "train_acc": 0.6,
        "val_acc": 0.55,
        "c": 1.0,
        "n_train": 100,
        "n_test": 50,
        "feature_dim": 64,
        "wall_time_s": 1.0,
        "mlflow_run_id": f"r{i:08d}",
    }


def write_like_a_study(tables: Path, rows: int) -> tuple[int, int]:
    """Evaluation rows (and a trials row per 5) through the sink, a flush every 10 rows and a
    table compacted once it has COMPACT_AFTER_PARTS parts (Recorder.flush); returns the parts
    written and the parts of the transfer table at the end."""
    from study.recorder import COMPACT_AFTER_PARTS
    from study.sinks.parquet import ParquetSink

    sink = ParquetSink(tables)
    flushes = 0
    for i in range(rows):
        sink.add("transfer", [transfer_row(i)])
        if i % 5 == 0:
            sink.add("trials", [{"trial_key": f"t{i // 5:08d}", "study": "scale"}])
        if (i + 1) % ROWS_PER_FLUSH == 0:
            sink.flush()
            sink.compact(min_parts=COMPACT_AFTER_PARTS)
            flushes += 1
    sink.flush()
    return flushes + 1, len(list((tables / "transfer").glob("part-*.parquet")))


def time_open_and_status(spec_path: Path, tables: Path) -> dict[str, float]:
    """Open the tables (ParquetSink), study status in this process and as a fresh process:
    each the median of 3."""
    from study.sinks.parquet import ParquetSink
    from study.spec import load_spec
    from study.status import study_status

    spec = load_spec(spec_path)
    opens, lookups, statuses, processes = [], [], [], []
    for _ in range(3):
        start = time.perf_counter()
        sink = ParquetSink(tables)
        opened = time.perf_counter()
        # The first question builds the transfer table's key set (once per sink).
        assert not sink.has("transfer", "absent")
        looked_up = time.perf_counter()
        status = study_status(spec, with_mlflow=False)
        statuses.append(time.perf_counter() - looked_up)
        lookups.append(looked_up - opened)
        opens.append(opened - start)
        assert status.rows["transfer"] > 0
        proc_start = time.perf_counter()
        subprocess.run(
            [str(BIN / "study"), "status", str(spec_path)],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        processes.append(time.perf_counter() - proc_start)
    return {
        "open_s": statistics.median(opens),
        "first_lookup_s": statistics.median(lookups),
        "status_s": statistics.median(statuses),
        "status_process_s": statistics.median(processes),
    }


def sink_scale(args: argparse.Namespace, work: Path) -> Section:
    """1. Opening a study's tables and `study status`, at 10, 1,000 and 50,000 rows."""
    from study.sinks.parquet import ParquetSink

    numbers: dict[str, Any] = {}
    lines = []
    for rows in SINK_ROWS:
        results = work / f"sink{rows}"
        spec = results / "spec.yaml"
        results.mkdir(parents=True)
        spec.write_text(
            yaml.safe_dump(
                {
                    "name": f"sink{rows}",
                    "grid": {
                        "sources": ["digits"],
                        "archs": ["small_cnn"],
                        "norms": ["l2"],
                        "eps": [0.0],
                        "seeds": [0],
                    },
                    "output": {"results_dir": str(results)},
                }
            )
        )
        print(f"  {rows} rows: writing ...", flush=True)
        written = time.perf_counter()
        flushes, parts = write_like_a_study(results / "tables", rows)
        write_s = time.perf_counter() - written
        before = time_open_and_status(spec, results / "tables")
        compacted = time.perf_counter()
        ParquetSink(results / "tables").compact()
        compact_s = time.perf_counter() - compacted
        after = time_open_and_status(spec, results / "tables")
        numbers[str(rows)] = {
            "flushes": flushes,
            "parts": parts,
            "write_s": write_s,
            "compact_s": compact_s,
            "before": before,
            "after": after,
        }
        lines.append(
            f"{rows:>6} rows in {flushes} flushes, {parts} parts of transfer at the end "
            f"(written in {write_s:.1f} s): open "
            f"{before['open_s']:.2f} s, status {before['status_s']:.2f} s "
            f"({before['status_process_s']:.2f} s as a process); compacted in {compact_s:.2f} s: "
            f"open {after['open_s']:.3f} s (then its first key lookup "
            f"{after['first_lookup_s']:.3f} s), status {after['status_s']:.3f} s "
            f"({after['status_process_s']:.2f} s as a process)"
        )
    big, mid = numbers[str(SINK_ROWS[-1])]["after"], numbers[str(SINK_ROWS[1])]["after"]
    goals = [
        Goal("open, 50,000 rows, compacted (s)", big["open_s"], SINK_GOAL_S),
        Goal("status, 50,000 rows, compacted (s)", big["status_s"], SINK_GOAL_S),
        Goal(
            "open growth 1,000 -> 50,000 rows (x)",
            big["open_s"] / mid["open_s"],
            SINK_GROWTH_GOAL,
            "x",
        ),
        Goal(
            "status growth 1,000 -> 50,000 rows (x)",
            big["status_s"] / mid["status_s"],
            SINK_GROWTH_GOAL,
            "x",
        ),
    ]
    return Section(numbers, goals, lines)


# ----- 2. per-cell driver overhead of a real study ---------------------------------------------
STUDY_CELLS = (10, 50, 200)
SLOTS = 2  # trials at once: one CPU each on this 2-core machine kind
OVERHEAD_GOAL = 1.2


def tiny_study(cells: int, results: Path) -> dict[str, Any]:
    """A grid of `cells` one-epoch trainings on a few digits, no evaluations."""
    return {
        "name": f"tiny{cells}",
        "grid": {
            "sources": [{"dataset": "digits", "classes": [0, 1, 2]}],
            "archs": [{"name": "small_cnn", "width": 0.25}],
            "norms": ["l2"],
            "eps": [round(0.01 * i, 2) for i in range(cells // 10)],
            "seeds": list(range(10)),
        },
        "training": {
            "epochs": 1,
            "batch_size": 16,
            "optimizer": "adam",
            "lr": 0.003,
            "augment": "none",
            "schedule": "constant",
            "attack": {"steps": 1},
            "eval_attack": {"steps": 1},
        },
        "data": {"max_per_class": 5, "max_test_per_class": 5},
        "evaluations": {
            "transfer": {"targets": [], "baselines": False},
            "fisher": {"enabled": False},
            "robustness": {"enabled": False},
            "inversion": {"enabled": False},
        },
        "output": {"results_dir": str(results)},
    }


def run_tiny_study(cells: int, work: Path) -> dict[str, float]:
    results = work / f"tiny{cells}"
    spec = work / f"tiny{cells}.yaml"
    spec.write_text(yaml.safe_dump(tiny_study(cells, results)))
    start = time.perf_counter()
    log = work / f"tiny{cells}.log"
    with log.open("w") as handle:
        proc = subprocess.run(
            [str(BIN / "study"), "run", str(spec), "--no-report"],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"study run {spec} exited {proc.returncode}: see {log}")
    import pandas as pd

    trials = pd.read_parquet(results / "tables" / "trials")
    if len(trials) != cells:
        raise SystemExit(f"{spec}: {len(trials)} trials in the table, not {cells}")
    training = float(trials["train_time_s"].sum())
    overhead = wall - training / SLOTS
    return {"wall_s": wall, "training_s": training, "overhead_s": overhead}


def driver_overhead(args: argparse.Namespace, work: Path) -> Section:
    """2. The driver's time beyond the trainings at 10, 50 and 200 cells."""
    runs = {}
    for cells in STUDY_CELLS:
        print(f"  study run, {cells} cells ...", flush=True)
        runs[cells] = run_tiny_study(cells, work)
        print(f"    {runs[cells]['wall_s']:.1f} s", flush=True)
    small, mid, big = STUDY_CELLS
    per_cell = {c: runs[c]["overhead_s"] / c for c in STUDY_CELLS}
    slope_low = (runs[mid]["overhead_s"] - runs[small]["overhead_s"]) / (mid - small)
    slope_high = (runs[big]["overhead_s"] - runs[mid]["overhead_s"]) / (big - mid)
    fixed = runs[small]["overhead_s"] - small * slope_low
    numbers = {
        "runs": {str(c): r for c, r in runs.items()},
        "overhead_per_cell_s": {str(c): v for c, v in per_cell.items()},
        "cost_per_cell_10_50_s": slope_low,
        "cost_per_cell_50_200_s": slope_high,
        "fixed_s": fixed,
    }
    lines = [
        f"{c:>4} cells: wall {r['wall_s']:.1f} s, trainings {r['training_s']:.1f} s "
        f"({SLOTS} at a time), overhead {r['overhead_s']:.1f} s = {per_cell[c]:.3f} s a cell"
        for c, r in runs.items()
    ]
    lines.append(
        f"cost per added cell: {slope_low:.3f} s (10 -> 50 cells), {slope_high:.3f} s "
        f"(50 -> 200); fixed part {fixed:.1f} s"
    )
    goals = [
        Goal(
            "overhead a cell, 200 over 10 cells (x)",
            per_cell[big] / per_cell[small],
            OVERHEAD_GOAL,
            "x",
            True,
        ),
        Goal(
            "cost a cell, 50-200 over 10-50 (x)", slope_high / slope_low, OVERHEAD_GOAL, "x", True
        ),
    ]
    return Section(numbers, goals, lines)


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
            "robustness": {"enabled": True, "eps": [0.5, 1.0, "standard"], "autoattack": "auto"},
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


# The sections main() runs, by number (--only picks some).
SECTIONS: dict[str, tuple[str, Callable[[argparse.Namespace, Path], Section]]] = {
    "1": ("The sinks at 10, 1,000 and 50,000 rows", sink_scale),
    "2": ("The driver's cost per cell at 10, 50 and 200 cells", driver_overhead),
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
                    f"   {goal.label:<40} {goal.value:>8.3f}   goal "
                    f"{'<=' if goal.at_most else '<'} {goal.bound:g} {goal.unit}"
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
