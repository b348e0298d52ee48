"""Study benchmarks: each ratio measured side by side in one run (issue goals in brackets).

3. Orchestration tax: `study run` on the demo grid (report included, as `make demo` runs it)
   against the same trainings and evaluations called in a plain loop in one process, without
   Ray, MLflow or parquet, with torch using every core                                 [<= 1.15x]
4. Re-run of the finished study (everything cached by key) against its first run      [<= 0.10x]
5. Logging: the driver's time in MLflow calls and parquet writes for the study and its trials
   (runs, params, per-epoch metrics and rows) over the trials' time                    [< 1%];
   reported beside it: the evaluations' logging (a run, its artifacts and a row each) over
   their time, and all of it over trial + evaluation time (RESULTS/study.json, last_run)
6. `make demo` wall time: `study run sweeps/demo.yaml` from a fresh process            [< 300 s]

Both sides run as fresh processes (imports included), in the order loop, study, loop: the tax is
the study against the mean of the two loops, so that a machine that slows down or speeds up
during the benchmark (a shared VM) does not bias the ratio; both loop times are printed. The
plain loop also checks that it got the same numbers: its final clean and PGD accuracy per trial
against the study's trials table.

Run: .venv/bin/python benchmarks/bench_study.py [--spec sweeps/demo.yaml] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GOALS = {
    "orchestration_tax": 1.15,
    "rerun_ratio": 0.10,
    "trial_logging_share": 0.01,
    "demo_s": 300.0,
}


class KeepLast:
    """A Reporter that keeps a copy of the newest checkpoint and the last epoch's metrics."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.metrics: dict[str, float] = {}

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.metrics = dict(metrics)
        if checkpoint_dir is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            shutil.copytree(checkpoint_dir, self.folder)


def plain_loop(spec_path: str, threads: int, out: str) -> None:
    """The study's trainings and evaluations, one after another, in this process."""
    import torch

    from study.plan import plan_baselines, plan_trial_evaluations
    from study.spec import load_spec
    from trainables.config import LoadRequest
    from trainables.data import build_dataset
    from trainables.evals import run_evaluation
    from trainables.training import run_training

    torch.set_num_threads(threads)
    spec = load_spec(spec_path)
    results = spec.results_dir()
    root = str(Path(spec.data.root).expanduser().resolve()) if spec.data.root else None
    load = LoadRequest(root=root, download=spec.data.download)
    finals: dict[str, dict[str, float]] = {}
    for planned in plan_baselines(spec, load):
        run_evaluation(planned.task)
    for cfg in spec.expand():
        splits = build_dataset(cfg.source, cfg.data, load.root, load.download, load.workers)
        keep = KeepLast(Path(results) / "checkpoints" / cfg.key)
        run_training(cfg, splits, keep, options=spec.training.run_options())
        finals[cfg.key] = keep.metrics
        for planned in plan_trial_evaluations(spec, cfg, str(keep.folder), results, load):
            run_evaluation(planned.task)
    Path(out).write_text(json.dumps(finals))


def timed(cmd: list[str], log: Path) -> float:
    """Wall time of a command run to completion (its output to log); fails loudly."""
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: see {log}")
    return wall


def write_spec(spec_path: Path, results_dir: Path, dest: Path) -> Path:
    spec = yaml.safe_load(spec_path.read_text())
    spec["output"] = {**spec.get("output", {}), "results_dir": str(results_dir)}
    spec["output"].pop("tracking_uri", None)
    dest.write_text(yaml.safe_dump(spec))
    return dest


def same_numbers(results: Path, loop_finals: Path) -> float:
    """The largest difference in final clean or PGD accuracy between the study and the loop."""
    import pandas as pd

    trials = pd.read_parquet(results / "tables" / "trials")
    finals = json.loads(loop_finals.read_text())
    worst = 0.0
    for row in trials.itertuples():
        loop = finals[row.trial_key]
        worst = max(
            worst,
            abs(row.test_acc_clean - loop["test/acc_clean"]),
            abs(row.test_acc_pgd - loop["test/acc_pgd"]),
        )
    return worst


def bench(spec_path: Path, threads: int, work: Path) -> dict[str, Any]:
    loop_spec = write_spec(spec_path, work / "loop", work / "loop.yaml")
    study_spec = write_spec(spec_path, work / "study", work / "study.yaml")
    finals = work / "loop-finals.json"
    loop_cmd = [sys.executable, __file__, "--loop", str(loop_spec), str(threads), str(finals)]
    print(f"plain loop ({threads} torch threads) ...", flush=True)
    t_loop_a = timed(loop_cmd, work / "loop.log")
    print(f"  {t_loop_a:.1f} s\nstudy run ...", flush=True)
    t_study = timed([str(BIN / "study"), "run", str(study_spec)], work / "study.log")
    # The first run's own account of its time (the re-run overwrites study.json).
    last = json.loads((work / "study" / "study.json").read_text())["last_run"]
    print(f"  {t_study:.1f} s\nplain loop again ...", flush=True)
    t_loop_b = timed(loop_cmd, work / "loop-again.log")
    t_loop = (t_loop_a + t_loop_b) / 2
    print(f"  {t_loop_b:.1f} s\nstudy run again (everything cached) ...", flush=True)
    t_rerun = timed([str(BIN / "study"), "run", str(study_spec)], work / "rerun.log")
    print(f"  {t_rerun:.1f} s", flush=True)
    return {
        "spec": str(spec_path),
        "plain_loop_s": t_loop,
        "plain_loop_runs_s": [t_loop_a, t_loop_b],
        "plain_loop_threads": threads,
        "study_run_s": t_study,
        "rerun_s": t_rerun,
        "orchestration_tax": t_study / t_loop,
        "rerun_ratio": t_rerun / t_study,
        "demo_s": t_study,
        "logging_share": last["logging_share"],
        "trial_logging_share": last["trial_logging_share"],
        "eval_logging_share": last["eval_logging_share"],
        "eval_logging_s": last["eval_logging_s"],
        "mlflow_s": last["mlflow_s"],
        "parquet_s": last["parquet_s"],
        "trial_time_s": last["trial_time_s"],
        "eval_time_s": last["eval_time_s"],
        "trials": last["trials_done"],
        "evaluations": last["evals_done"],
        "max_accuracy_difference_vs_loop": same_numbers(work / "study", finals),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "sweeps" / "demo.yaml"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="keep the results folders here instead of a temp folder")
    parser.add_argument("--loop", nargs=3, help=argparse.SUPPRESS)  # internal: the plain loop
    args = parser.parse_args()
    if args.loop:
        plain_loop(args.loop[0], int(args.loop[1]), args.loop[2])
        return
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="atsweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = bench(Path(args.spec), args.threads, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()}"
    print()
    rows = [
        ("orchestration tax (study run / plain loop)", "orchestration_tax", "<= 1.15x"),
        ("re-run / first run", "rerun_ratio", "<= 0.10x"),
        ("logging share of the trials' time", "trial_logging_share", "< 1%"),
        ("  of the evaluations' time", "eval_logging_share", None),
        ("  of trial + evaluation time", "logging_share", None),
        ("demo wall time (s)", "demo_s", "< 300 s"),
    ]
    for label, key, goal in rows:
        share = key.endswith("logging_share")
        value = f"{100 * result[key]:.2f}%" if share else f"{result[key]:.3f}"
        if goal is None:
            print(f"{label:<44} {value:>9}   reported")
            continue
        met = result[key] < GOALS[key] if share else result[key] <= GOALS[key]
        print(f"{label:<44} {value:>9}   goal {goal:<9} {'met' if met else 'NOT MET'}")
    print(
        f"plain loop {result['plain_loop_s']:.1f} s (mean of "
        f"{' and '.join(f'{t:.1f}' for t in result['plain_loop_runs_s'])} s), "
        f"study run {result['study_run_s']:.1f} s, "
        f"re-run {result['rerun_s']:.1f} s; {result['trials']} trials, "
        f"{result['evaluations']} evaluations; largest accuracy difference study vs loop "
        f"{result['max_accuracy_difference_vs_loop']:.4f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
