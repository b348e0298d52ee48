"""GPU benchmarks (skipped cleanly without CUDA): each ratio measured side by side in one run.

1. ResNet-18 (CIFAR-style, width 1) PGD-7 adversarial training steps on CIFAR-size inputs:
   images/s with bf16 autocast and channels_last against fp32 (the training loop's own step,
   trainables.training.training_step, under DeviceSetup), each with and without torch.compile
   (training.compile), and the fraction of the card's bf16 matmul peak measured in the same run
   (FLOPs counted by torch's FlopCounterMode). GPU JPEG decoding against the CPU workers is in
   benchmarks/bench_data.py (its loader section, where CUDA is present).
2. Packing: a small grid of small trials run by `study run` with a fractional GPU request per
   trial (several trials on the one GPU at once) against one trial at a time (a whole GPU each).

Run: .venv/bin/python benchmarks/bench_gpu.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from trainables.config import ArchRef, AttackConfig, DatasetRef, OptimConfig, RunOptions
from trainables.config import TrainConfig as Config
from trainables.models import ModelInput, build_model
from trainables.training import (
    DeviceSetup,
    build_optimizer,
    compiled,
    seeded_generator,
    training_step,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def bf16_matmul_peak(n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def pgd7_throughput(options: RunOptions, batch: int, steps: int) -> dict[str, float]:
    """images/s of PGD-7 training steps of ResNet-18 on 32x32 inputs under these options."""
    device = torch.device("cuda")
    setup = DeviceSetup(device, options)
    torch.manual_seed(0)
    inputs = ModelInput(3, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    model = setup.prepare_model(build_model(ArchRef("resnet18", 1.0), inputs, 10))
    optimizer = build_optimizer(model, OptimConfig(optimizer="sgd", lr=0.1))
    net = compiled(model, options, device)
    cfg = Config(
        source=DatasetRef("cifar10"),
        arch=ArchRef("resnet18", 1.0),
        norm="linf",
        eps=8 / 255,
        seed=0,
        attack=AttackConfig(steps=7),
    )
    x = setup.prepare_batch(torch.rand(batch, 3, 32, 32, device=device))
    y = torch.randint(0, 10, (batch,), device=device)
    gen = seeded_generator(0, 1, 0, device)
    model.train()

    def step() -> None:
        training_step(net, optimizer, x, y, cfg, setup, gen)

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    return {
        "images_per_s": batch / step_s,
        "step_s": step_s,
        "flops_per_step": float(counter.get_total_flops()),
        "bf16": float(setup.bf16),
        "channels_last": float(setup.channels_last),
    }


def packing(work: Path, trials: int, fraction: float) -> dict[str, float]:
    """Wall time of `study run` on `trials` small trials: fractional GPUs against whole ones."""
    base = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    base["grid"]["eps"] = [0.0, 0.25, 0.5, 1.0][: max(1, trials // 2)]
    base["grid"]["seeds"] = list(range(max(1, trials // len(base["grid"]["eps"]))))
    base["training"]["epochs"] = 10
    off = {"enabled": False}
    base["evaluations"] = {"transfer": {"targets": []}, "fisher": off, "robustness": off}
    base["evaluations"]["inversion"] = off
    out: dict[str, float] = {}
    for label, gpus in (("packed", fraction), ("one_at_a_time", 1.0)):
        spec = dict(base)
        spec["name"] = f"pack-{label}"
        spec["output"] = {"results_dir": str(work / label)}
        spec["resources"] = {"cpus_per_trial": 2, "gpus_per_trial": gpus, "gpus_per_eval": 0}
        path = work / f"{label}.yaml"
        path.write_text(yaml.safe_dump(spec))
        start = time.perf_counter()
        subprocess.run([str(BIN / "study"), "run", str(path), "--no-report"], check=True, cwd=ROOT)
        out[f"{label}_s"] = time.perf_counter() - start
    out["speedup"] = out["one_at_a_time_s"] / out["packed_s"]
    out["trials"] = float(trials)
    out["gpus_per_trial_packed"] = fraction
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pack-trials", type=int, default=8)
    parser.add_argument("--pack-fraction", type=float, default=0.25)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
    }
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmarks are skipped")
        result["skipped"] = "no CUDA device"
    else:
        result["device"] = torch.cuda.get_device_name(0)
        peak = bf16_matmul_peak()
        fp32 = pgd7_throughput(
            RunOptions(precision="fp32", channels_last="false"), args.batch, args.steps
        )
        mixed = pgd7_throughput(
            RunOptions(precision="bf16", channels_last="true"), args.batch, args.steps
        )
        mixed["fraction_of_bf16_peak"] = mixed["flops_per_step"] / mixed["step_s"] / peak
        result.update(bf16_matmul_peak_tflops=peak / 1e12, fp32=fp32, bf16_channels_last=mixed)
        for label, options in (
            ("fp32_compiled", RunOptions(precision="fp32", channels_last="false", compile=True)),
            ("bf16_channels_last_compiled", RunOptions(precision="bf16", compile=True)),
        ):
            run = pgd7_throughput(options, args.batch, args.steps)
            run["fraction_of_bf16_peak"] = run["flops_per_step"] / run["step_s"] / peak
            result[label] = run
            print(f"  {label}: {run['images_per_s']:.0f} images/s "
                  f"({100 * run['fraction_of_bf16_peak']:.0f}% of the bf16 peak)")  # fmt: skip
        print(f"{result['device']}: bf16 matmul peak {peak / 1e12:.0f} TFLOP/s")
        print(f"ResNet-18 PGD-7, batch {args.batch}: fp32 {fp32['images_per_s']:.0f} images/s, "
              f"bf16 + channels_last {mixed['images_per_s']:.0f} images/s "
              f"({mixed['images_per_s'] / fp32['images_per_s']:.2f}x), "
              f"{100 * mixed['fraction_of_bf16_peak']:.0f}% of the bf16 peak")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="atsweep-gpu-") as work:
            pack = packing(Path(work), args.pack_trials, args.pack_fraction)
        result["packing"] = pack
        print(f"{args.pack_trials} small trials: {pack['packed_s']:.0f} s packed at "
              f"{args.pack_fraction} GPU each, {pack['one_at_a_time_s']:.0f} s one at a time "
              f"({pack['speedup']:.2f}x)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
