"""Training benchmarks: each ratio measured side by side in one run (issue goals in brackets).

1. AT step cost: a PGD-k training step over a clean training step, k in {1, 3, 7, 10}, against
   the bound (2k+3)/3 (each attack step is a forward and an input-only backward, 2/3 of a
   clean step)                                                       [within 5% of the bound];
   beside it the same ratio in FLOPs (FlopCounterMode): what the bound becomes once an attack
   step's input gradient of the first layer, which a clean step skips, is counted
2. Training throughput: FLOP/s of a clean training step (FLOPs counted by torch's
   FlopCounterMode) as a fraction of the fp32 matmul peak measured in the same run
                                                                     [>= 50% for the small ResNet]

Both use the training loop's own step (trainables.training.training_step). Timings are medians
of interleaved rounds (clean, PGD-k, clean), so that a slow patch of the machine affects both
sides of a ratio. --profile prints torch.profiler's top operators of a clean step and of one
attack step: where the time goes.

Run: .venv/bin/python benchmarks/bench_training.py [--threads N] [--json out.json] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainables.attacks import pgd
from trainables.config import ArchRef, AttackConfig, DatasetRef, OptimConfig, RunOptions
from trainables.config import TrainConfig as Config
from trainables.models import ModelInput, build_model
from trainables.training import DeviceSetup, build_optimizer, seeded_generator, training_step

KS = (1, 3, 7, 10)


@dataclass(frozen=True)
class Case:
    """A network and the batch it trains on."""

    name: str
    arch: ArchRef
    channels: int
    size: int
    batch: int
    norm: str
    eps: float


RESNET, CNN = ArchRef("resnet18", 0.25), ArchRef("small_cnn", 1.0)
CASES = (
    Case("small ResNet (resnet18 x0.25), 32x32x3, batch 128", RESNET, 3, 32, 128, "linf", 8 / 255),
    Case("small CNN, 32x32x3, batch 128", CNN, 3, 32, 128, "linf", 8 / 255),
    Case("small CNN, the demo's digits (8x8), batch 32", CNN, 1, 8, 32, "l2", 1.0),
)


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """fp32 matmul FLOP/s on this many threads: the best of several n x n products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(3):
        a @ b
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class Stepper:
    """One case's model, optimizer and batch; step(k) is a training step with PGD-k (0: clean)."""

    def __init__(self, case: Case) -> None:
        torch.manual_seed(0)
        inputs = ModelInput(
            case.channels, case.size, (0.5,) * case.channels, (0.25,) * case.channels
        )
        self.model = build_model(case.arch, inputs, 10)
        self.optimizer = build_optimizer(self.model, OptimConfig(optimizer="sgd", lr=0.01))
        self.setup = DeviceSetup(torch.device("cpu"), RunOptions())
        self.x = torch.rand(case.batch, case.channels, case.size, case.size)
        self.y = torch.randint(0, 10, (case.batch,))
        self.case = case
        self.model.train()

    def config(self, k: int) -> Config:
        return Config(
            source=DatasetRef("digits"),
            arch=self.case.arch,
            norm=self.case.norm,
            eps=self.case.eps if k else 0.0,
            seed=0,
            attack=AttackConfig(steps=max(k, 1)),
        )

    def step(self, k: int) -> None:
        gen = seeded_generator(0, 1, 0, torch.device("cpu"))
        cfg = self.config(k)
        training_step(self.model, self.optimizer, self.x, self.y, cfg, self.setup, gen)

    def attack_only(self) -> None:
        """One attack step alone (forward and input-only backward), for the profile."""
        pgd(self.model, self.x, self.y, norm=self.case.norm, eps=self.case.eps, steps=1,
            step_size=self.case.eps / 4, random_start=False)  # fmt: skip


def seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def at_step_cost(stepper: Stepper, rounds: int) -> dict[str, Any]:
    """Median over interleaved rounds of t(PGD-k step) / mean(t(clean step) before and after)."""
    for k in (0, *KS):
        stepper.step(k)  # warm-up
    ratios: dict[int, list[float]] = {k: [] for k in KS}
    clean: list[float] = []
    for _ in range(rounds):
        for k in KS:
            before = seconds(lambda: stepper.step(0))
            attacked = seconds(lambda k=k: stepper.step(k))
            after = seconds(lambda: stepper.step(0))
            ratios[k].append(attacked / ((before + after) / 2))
            clean += [before, after]
    out: dict[str, Any] = {"clean_step_s": statistics.median(clean)}
    for k in KS:
        ratio, bound = statistics.median(ratios[k]), (2 * k + 3) / 3
        out[f"pgd{k}"] = {"ratio": ratio, "bound": bound, "over_bound": ratio / bound}
    return out


def flop_ratio(stepper: Stepper, clean_flops: float) -> float:
    """An attack step's convolution and matmul FLOPs over a clean step's (FlopCounterMode, the
    clean step's count from throughput()): 2/3 when the network's first layer is a negligible
    share, more when its input gradient, which a clean step never computes, is not. PGD-k then
    costs 1 + k * this in FLOPs."""
    with FlopCounterMode(display=False) as counter:
        stepper.step(1)
    return (counter.get_total_flops() - clean_flops) / clean_flops


def throughput(stepper: Stepper, peak: float, repeats: int) -> dict[str, float]:
    with FlopCounterMode(display=False) as counter:
        stepper.step(0)
    flops = counter.get_total_flops()
    times = sorted(seconds(lambda: stepper.step(0)) for _ in range(repeats))
    step_s = statistics.median(times)
    return {
        "flops_per_step": float(flops),
        "step_s": step_s,
        "gflops": flops / step_s / 1e9,
        "fraction_of_peak": flops / step_s / peak,
        "images_per_s": stepper.case.batch / step_s,
    }


def profile(stepper: Stepper) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for label, fn in (
        ("clean step", lambda: stepper.step(0)),
        ("attack step", stepper.attack_only),
    ):
        fn()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                fn()
        print(f"\n{stepper.case.name}: {label} (5 calls)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per k")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak on {args.threads} threads: {peak / 1e9:.1f} GFLOP/s")
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()}",
        "threads": args.threads,
        "matmul_peak_gflops": peak / 1e9,
        "cases": {},
    }
    for case in CASES:
        stepper = Stepper(case)
        cost = at_step_cost(stepper, args.rounds)
        speed = throughput(stepper, peak, repeats=10)
        attack_flops = flop_ratio(stepper, speed["flops_per_step"])
        for k in KS:
            cost[f"pgd{k}"]["flop_exact"] = 1 + k * attack_flops
        result["cases"][case.name] = {
            "at_step_cost": cost,
            "throughput": speed,
            "attack_step_flops_over_clean": attack_flops,
        }
        print(f"\n{case.name}: clean step {1000 * cost['clean_step_s']:.1f} ms, "
              f"{speed['gflops']:.1f} GFLOP/s = {100 * speed['fraction_of_peak']:.0f}% of peak, "
              f"{speed['images_per_s']:.0f} images/s; an attack step is "
              f"{attack_flops:.3f} of a clean step in FLOPs")  # fmt: skip
        for k in KS:
            c = cost[f"pgd{k}"]
            verdict = "met" if c["over_bound"] <= 1.05 else "NOT MET"
            over = 100 * (c["over_bound"] - 1)
            exact = 100 * (c["flop_exact"] / c["bound"] - 1)
            print(f"  PGD-{k:<2} step / clean step {c['ratio']:6.3f}   bound (2k+3)/3 "
                  f"{c['bound']:6.3f}   {over:+5.1f}%  {verdict:<7}   in FLOPs "
                  f"{c['flop_exact']:6.3f} ({exact:+.1f}%)")  # fmt: skip
        if args.profile:
            profile(stepper)
    resnet = result["cases"][CASES[0].name]["throughput"]["fraction_of_peak"]
    print(f"\nsmall ResNet training step at {100 * resnet:.0f}% of the matmul peak "
          f"(goal >= 50%): {'met' if resnet >= 0.5 else 'NOT MET'}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
