"""Evaluation benchmarks: each ratio measured side by side in one run (issue goals in brackets).

1. Input Fisher trace: Hutchinson with 8 probes vs the exact Jacobian (jacrev)   [>= 15x]
2. Weight Fisher trace: torch.func per-sample gradients vs a per-sample loop      [>= 1.5x]
3. Linear probe: our L-BFGS vs scikit-learn's lbfgs at equal loss, 10k x 512, 100 classes [>= 3x]

Run: .venv/bin/python benchmarks/bench_evals.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from trainables.config import ArchRef
from trainables.evals.fisher import (
    compute_weight_fisher,
    input_fisher_trace_exact,
    input_fisher_trace_hutchinson,
)
from trainables.evals.probe import fit_linear_probe, probe_objective
from trainables.models import ModelInput, build_model


def best_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """The fastest of `repeats` runs (after one warm-up), and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_input_fisher() -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(ArchRef("resnet18", 0.25), ModelInput(3, 32, (0.5,) * 3, (0.25,) * 3), 10)
    model.eval()
    x = torch.rand(16, 3, 32, 32)
    t_exact, exact = best_time(lambda: input_fisher_trace_exact(model.features, x), repeats=1)
    gen = torch.Generator().manual_seed(0)
    t_hutch, est = best_time(
        lambda: input_fisher_trace_hutchinson(model.features, x, 8, generator=gen), repeats=3
    )
    rel_err = float(((est - exact).abs() / exact).mean().detach())
    return {
        "exact_s": t_exact,
        "hutchinson8_s": t_hutch,
        "speedup": t_exact / t_hutch,
        "mean_per_sample_rel_error": rel_err,
    }


def bench_weight_fisher() -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(ArchRef("small_cnn"), ModelInput(1, 28, (0.3,), (0.35,)), 10).eval()
    x = torch.rand(256, 1, 28, 28)
    y = torch.randint(0, 10, (256,))

    def loop() -> float:
        total = 0.0
        for i in range(len(x)):
            model.zero_grad()
            (-F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])).backward()
            total += sum(float(p.grad.pow(2).sum()) for p in model.parameters())
        return total / len(x)

    t_loop, ref = best_time(loop, repeats=2)
    t_func, res = best_time(
        lambda: compute_weight_fisher(model, x, y, fisher_type="empirical", batch_size=256),
        repeats=2,
    )
    return {
        "loop_s": t_loop,
        "torch_func_s": t_func,
        "speedup": t_loop / t_func,
        "rel_diff": abs(res.trace.mean - ref) / ref,
    }


def bench_probe() -> dict[str, float]:
    """Both solvers to the same objective value: the optimum (ours at a tight tolerance) within
    1e-4 relative; each timed at the loosest tolerance of its own that gets there."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d, k = 10_000, 512, 100
    centers = rng.normal(size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    f = (centers[y] + 4.0 * rng.normal(size=(n, d))).astype(np.float32)
    c = 0.1
    feats, labels = torch.from_numpy(f), torch.from_numpy(y)
    optimum = fit_linear_probe(feats, labels, k, c, tol=1e-9, max_iter=2000).loss
    target = optimum * (1 + 1e-4)
    x = ((feats - feats.mean(0)) / feats.std(0, unbiased=False)).numpy()
    tolerances = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)

    ours_s = ours_loss = None
    for tol in tolerances:
        t, fit = best_time(lambda tol=tol: fit_linear_probe(feats, labels, k, c, tol=tol), 2)
        if fit.loss <= target:
            ours_s, ours_loss = t, fit.loss
            break
    sk_s = sk_loss = None
    for tol in tolerances:
        t0 = time.perf_counter()
        sk = LogisticRegression(C=c, tol=tol, max_iter=5000).fit(x, y)
        elapsed = time.perf_counter() - t0
        loss = float(
            probe_objective(
                torch.from_numpy(sk.coef_).float(),
                torch.from_numpy(sk.intercept_).float(),
                torch.from_numpy(x),
                labels,
                c,
            )
        )
        if loss <= target:
            sk_s, sk_loss = elapsed, loss
            break
    assert ours_s is not None and sk_s is not None, "a solver never reached the target loss"
    return {
        "ours_s": ours_s,
        "sklearn_s": sk_s,
        "speedup": sk_s / ours_s,
        "optimum": optimum,
        "ours_loss": ours_loss,
        "sklearn_loss": sk_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "input_fisher": bench_input_fisher(),
        "weight_fisher": bench_weight_fisher(),
        "probe": bench_probe(),
    }
    goals = {"input_fisher": 15.0, "weight_fisher": 1.5, "probe": 3.0}
    for name, goal in goals.items():
        r = results[name]
        status = "meets" if r["speedup"] >= goal else "MISSES"
        print(f"{name:<14} speedup {r['speedup']:6.1f}x  (goal >= {goal:g}x: {status})  {r}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
