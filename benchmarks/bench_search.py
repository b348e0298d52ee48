"""Adaptive search against a grid with the same trial budget: the hypervolume each reaches.

On the digits problem (source digits 0-4, target digits 5-9, small CNN, L2 PGD), a grid of
BUDGET evenly spaced eps in [0, 2] and an Optuna search (NSGA-II by default) of BUDGET trials
over eps in [0, 2] each map the front of source clean accuracy against linear transfer accuracy.
For every seed (the training seed and the sampler's) both run as real studies (Ray Tune, MLflow,
parquet) on one local Ray; the hypervolume of each front is measured against a common reference
point: the worst value of each objective over both studies of that seed, less 0.01.

Run: .venv/bin/python benchmarks/bench_search.py [--seeds 0 1 2] [--budget 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis import hypervolume, load_tables, objective_points
from study.runner import Study
from study.spec import SweepSpec

OBJECTIVES = ["test_acc_clean", "transfer:digits-c56789"]


def base_spec(name: str, results: Path) -> dict[str, Any]:
    return {
        "name": name,
        "training": {"epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": 0.003}
        | {"augment": "none", "schedule": "cosine", "attack": {"steps": 3}},
        "data": {"max_per_class": 120, "max_test_per_class": 60},
        "evaluations": {
            "transfer": {"targets": [{"dataset": "digits", "classes": [5, 6, 7, 8, 9]}]}
            | {"c_grid": [0.1, 1.0], "baselines": False},
            "fisher": {"enabled": False},
            "robustness": {"enabled": False},
            "inversion": {"enabled": False},
        },
        "output": {"results_dir": str(results)},
    }


def grid_spec(seed: int, budget: int, root: Path) -> SweepSpec:
    spec = base_spec(f"grid-{seed}", root / f"grid-{seed}")
    spec["grid"] = {
        "sources": [{"dataset": "digits", "classes": [0, 1, 2, 3, 4]}],
        "archs": ["small_cnn"],
        "norms": ["l2"],
        "eps": [round(float(e), 6) for e in np.linspace(0.0, 2.0, budget)],
        "seeds": [seed],
    }
    return SweepSpec.model_validate(spec)


def search_spec(seed: int, budget: int, root: Path, sampler: str) -> SweepSpec:
    spec = base_spec(f"search-{seed}", root / f"search-{seed}")
    spec["search"] = {
        "source": {"dataset": "digits", "classes": [0, 1, 2, 3, 4]},
        "arch": "small_cnn",
        "seed": seed,
        "space": {"eps": {"low": 0.0, "high": 2.0}},
        "objectives": [{"metric": m} for m in OBJECTIVES],
        "sampler": sampler,
        "sampler_seed": seed,
        "num_trials": budget,
        "max_concurrent": 2,
    }
    return SweepSpec.model_validate(spec)


def run(spec: SweepSpec) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    Study(spec, printer=lambda _: None).run()
    points = objective_points(load_tables(spec.results_dir()), OBJECTIVES)
    return points[OBJECTIVES].dropna().to_numpy(float), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=6, help="trials per study")
    parser.add_argument("--sampler", default="nsga2")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        for seed in args.seeds:
            grid, grid_s = run(grid_spec(seed, args.budget, Path(tmp)))
            search, search_s = run(search_spec(seed, args.budget, Path(tmp), args.sampler))
            both = np.vstack([grid, search])
            reference = both.min(axis=0) - 0.01
            hv_grid = hypervolume(grid, reference, [True, True])
            hv_search = hypervolume(search, reference, [True, True])
            rows.append(
                {
                    "seed": seed,
                    "reference": reference.tolist(),
                    "hv_grid": hv_grid,
                    "hv_search": hv_search,
                    "ratio_search_over_grid": hv_search / hv_grid if hv_grid else float("nan"),
                    "grid_s": grid_s,
                    "search_s": search_s,
                }
            )
            print(
                f"seed {seed}: hypervolume grid {hv_grid:.5f}  {args.sampler} {hv_search:.5f}  "
                f"ratio {rows[-1]['ratio_search_over_grid']:.3f}  "
                f"(reference {reference.round(3).tolist()}; {grid_s:.0f} s / {search_s:.0f} s)",
                flush=True,
            )
    ratios = np.array([r["ratio_search_over_grid"] for r in rows])
    wins = int((ratios > 1).sum())
    print(
        f"{args.sampler} vs grid, {args.budget} trials each, {len(rows)} seeds: hypervolume ratio "
        f"mean {ratios.mean():.3f} (min {ratios.min():.3f}, max {ratios.max():.3f}); "
        f"{args.sampler} ahead on {wins} of {len(rows)} seeds"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"budget": args.budget, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
