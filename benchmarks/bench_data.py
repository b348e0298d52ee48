"""Data and step benchmarks for ImageNet-size sources: each ratio measured side by side in one run.

1. Loader against the step: a synthetic ImageFolder of JPEGs that the benchmark writes (2,000
   images of 10 classes, 300-500 px a side, quality 90), read with the train recipe
   (RandomResizedCrop 224 + flip; trainables.data.loader) at 0, 1 and 2 worker processes:
   images per second delivered, against the images per second that the tv_resnet18 training
   step at PGD-1 (batch 32, 224 px, every thread of the process) consumes on the same machine.
   Beside it the serial path of before (decode, resize and centre crop to 224 in the trial's
   process, then RandomResizedCrop on the tensors). Goal: with the workers that plan_workers
   gives a trial holding --cpus CPUs, delivered >= 1.2x consumed. Also measured end to end:
   the step fed by the loader at that plan against the step on one batch held in memory.
2. torch.compile: the AT step (PGD-7) and the clean step of the small ResNet (resnet18 x0.25,
   32x32, batch 128) with and without compile, on the CPU: each ratio PGD-7 / clean against the
   (2k+3)/3 bound of bench_training.py, and compiled over eager.
3. Precision: the small ResNet's clean training step in fp32, bf16 autocast, and bf16 +
   channels_last, with what precision auto chooses here (bf16 only where the CPU computes it
   natively: AVX-512 BF16 or AMX, as torch reports it).

Timings are medians of interleaved rounds. Run:
  .venv/bin/python benchmarks/bench_data.py [--images 2000] [--cpus N] [--json out.json]
      [--skip-compile] [--only loader|precision|compile] [--folder DIR (a folder it wrote)]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_training import CASES, Stepper
from trainables.config import (
    ArchRef,
    AttackConfig,
    DataConfig,
    DatasetRef,
    OptimConfig,
    RunOptions,
    TrainConfig,
)
from trainables.data import augment_batch, build_dataset, random_resized_crop_batch
from trainables.data.loader import (
    Batches,
    cpu_share,
    file_backed,
    plan_workers,
    resized_crop_box,
    view_seeds,
)
from trainables.data.vision import register_image_folder
from trainables.models import ModelInput, build_model
from trainables.training import (
    DeviceSetup,
    build_optimizer,
    compiled,
    cpu_has_native_bf16,
    seeded_generator,
    training_step,
)

SIZE, BATCH, CLASSES = 224, 32, 10


def write_folder(folder: Path, n: int, seed: int = 0) -> None:
    """n RGB JPEGs in CLASSES folders: smooth colour fields plus noise, 300-500 px a side."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(300, 501, size=2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 6.3, size=3)
        rgb = np.stack([np.sin(xx / (17 + 9 * c) + yy / (23 + 5 * c) + phase[c]) for c in range(3)])
        pixels = 127 + 90 * rgb.transpose(1, 2, 0) + rng.normal(0, 10, size=(h, w, 3))
        path = folder / f"class{i % CLASSES}" / f"img_{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def delivered(images: Any, workers: int, limit: int) -> dict[str, float]:
    """Images per second of one train-view pass at `workers`, from the second batch on (the
    workers' start-up reported apart)."""
    order = np.random.default_rng(0).permutation(len(images))[:limit]
    seeds = view_seeds(len(order), torch.Generator().manual_seed(0))
    batches = Batches(images, BATCH, workers=workers, train_view=True)
    with cpu_share(workers):
        start = time.perf_counter()
        stream = batches(order, seeds)
        next(stream)
        first = time.perf_counter() - start
        start, n = time.perf_counter(), 0
        for x, _ in stream:
            n += len(x)
        steady = time.perf_counter() - start
    batches.close()
    return {"images_per_s": n / steady, "first_batch_s": first}


def gpu_decode(images: Any, limit: int) -> dict[str, float]:
    """Images per second of the train view decoded on the GPU (torchvision.io.decode_jpeg on
    CUDA, batched; RandomResizedCrop and flip on the decoded tensors), for the choice between
    it and the CPU workers. Only where CUDA is present."""
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as F

    backed = file_backed(images)
    assert backed is not None
    base, index = backed
    files = [base.dataset.samples[int(i)][0] for i in index[:limit]]
    gen = torch.Generator().manual_seed(0)
    decode_jpeg([read_file(files[0])], device="cuda")  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(0, len(files), BATCH):
        data = [read_file(f) for f in files[s : s + BATCH]]
        crops = []
        for img in decode_jpeg(data, device="cuda"):
            top, left, ch, cw = resized_crop_box(img.shape[-2], img.shape[-1], gen)
            crops.append(F.resized_crop(img, top, left, ch, cw, [SIZE, SIZE], antialias=True))
        torch.stack(crops)
    torch.cuda.synchronize()
    rate = len(files) / (time.perf_counter() - start)
    print(f"   GPU decoding (decode_jpeg on CUDA, batched, crops on the GPU): {rate:.0f} images/s")
    return {"images_per_s": rate}


def serial_before(images: Any, limit: int) -> float:
    """Images per second of the path before the loader: decode, resize and centre crop in this
    process, then RandomResizedCrop and flip on the tensors."""
    gen = torch.Generator().manual_seed(0)
    order = np.random.default_rng(0).permutation(len(images))[:limit]
    start = time.perf_counter()
    for s in range(0, len(order), BATCH):
        x = images.get_batch(order[s : s + BATCH])
        augment_batch(random_resized_crop_batch(x, gen), gen, crop_padding=0, flip=True)
    return len(order) / (time.perf_counter() - start)


class ImageNetStep:
    """tv_resnet18 at 224 px: one PGD-1 training step on a batch (the trial's own step)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        inputs = ModelInput(3, SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        self.model = build_model(ArchRef("tv_resnet18"), inputs, CLASSES).train()
        self.optimizer = build_optimizer(self.model, OptimConfig(optimizer="sgd", lr=0.01))
        self.setup = DeviceSetup(torch.device("cpu"), RunOptions(precision="fp32"))
        self.cfg = TrainConfig(
            DatasetRef("imagenet"), ArchRef("tv_resnet18"), "l2", 3.0, 0,
            attack=AttackConfig(steps=1),
        )  # fmt: skip
        self.x = torch.rand(BATCH, 3, SIZE, SIZE)
        self.y = torch.randint(0, CLASSES, (BATCH,))

    def step(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        gen = seeded_generator(0, 1, 0, torch.device("cpu"))
        x = self.x if x is None else x
        y = self.y if y is None else y
        training_step(self.model, self.optimizer, x, y, self.cfg, self.setup, gen)


def seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fed_against_unfed(
    step: ImageNetStep, images: Any, workers: int, steps: int
) -> dict[str, float]:
    """The step fed by the loader (train view, `workers` processes, the process's threads
    lowered by them) against the same number of steps on one batch held in memory, timed
    before and after it (their mean)."""
    unfed = sum(seconds(step.step) for _ in range(steps))
    order = np.random.default_rng(1).permutation(len(images))[: steps * BATCH]
    seeds = view_seeds(len(order), torch.Generator().manual_seed(1))
    batches = Batches(images, BATCH, workers=workers, train_view=True)
    with cpu_share(workers):
        stream = batches(order, seeds)
        x, idx = next(stream)  # the workers' start-up is not a step's cost
        start = time.perf_counter()
        step.step(x.float().div_(255), torch.from_numpy(images.targets[idx]))
        for x, idx in stream:
            step.step(x.float().div_(255), torch.from_numpy(images.targets[idx]))
        fed = time.perf_counter() - start
    batches.close()
    unfed = (unfed + sum(seconds(step.step) for _ in range(steps))) / 2
    return {"fed_s": fed, "unfed_s": unfed, "fed_over_unfed": fed / unfed}


def loader_section(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp()) / "jpegs"
    if not any(folder.glob("class0/*.JPEG")):
        start = time.perf_counter()
        write_folder(folder, args.images)
        print(f"wrote {args.images} JPEGs to {folder} in {time.perf_counter() - start:.0f} s")
    register_image_folder("bench_jpegs", folder, num_classes=CLASSES, size=SIZE)
    train = build_dataset(DatasetRef("bench_jpegs"), DataConfig(test_fraction=0.05)).train
    limit = min(len(train), args.loader_images)
    out: dict[str, Any] = {"images": len(train), "measured_images": limit, "workers": {}}
    torch.set_num_threads(args.cpus)
    step = ImageNetStep()
    step.step()  # warm-up
    consumed = BATCH / statistics.median(seconds(step.step) for _ in range(args.steps))
    out["consumed_images_per_s"] = consumed
    print(f"\n1. tv_resnet18 PGD-1 training step, 224 px, batch {BATCH}, {args.cpus} threads: "
          f"{consumed:.1f} images/s consumed")  # fmt: skip
    before = serial_before(train, min(limit, 256))
    out["serial_before_images_per_s"] = before
    print(f"   serial path before the loader (decode, resize, crop, then RandomResizedCrop on "
          f"tensors): {before:.0f} images/s = {before / consumed:.1f}x consumed")  # fmt: skip
    for workers in (0, 1, 2):
        got = delivered(train, workers, limit)
        out["workers"][str(workers)] = {**got, "over_consumed": got["images_per_s"] / consumed}
        print(f"   loader, train view, {workers} workers: {got['images_per_s']:.0f} images/s "
              f"= {got['images_per_s'] / consumed:.1f}x consumed (first batch "
              f"{got['first_batch_s']:.2f} s)")  # fmt: skip
    planned = plan_workers(None, args.cpus, "cpu")
    rate = out["workers"][str(min(planned, 2))]["images_per_s"]
    verdict = "met" if rate >= 1.2 * consumed else "NOT MET"
    out["planned_workers"] = planned
    out["goal"] = {"delivered_over_consumed": rate / consumed, "met": rate >= 1.2 * consumed}
    print(
        f"   a CPU trial holding {args.cpus} CPUs decodes with {planned} workers "
        f"(plan_workers): delivered {rate / consumed:.1f}x consumed (goal >= 1.2x): {verdict}"
    )
    e2e = fed_against_unfed(step, train, planned, args.steps)
    out["end_to_end"] = e2e
    print(f"   end to end at that plan: {args.steps} steps fed by the loader "
          f"{e2e['fed_s']:.1f} s against {e2e['unfed_s']:.1f} s on a batch in memory "
          f"({e2e['fed_over_unfed']:.3f}x)")  # fmt: skip
    if torch.cuda.is_available():
        out["gpu_decode"] = gpu_decode(train, limit)
    per_worker = out["workers"]["1"]["images_per_s"]
    out["images_per_s_per_worker"] = per_worker
    print(f"   one worker delivers {per_worker:.0f} images/s: a GPU trial consuming R images/s "
          f"needs about 1.2 R / {per_worker:.0f} workers")  # fmt: skip
    return out


def step_ratio(stepper: Stepper, k: int, rounds: int) -> tuple[float, float]:
    """(median PGD-k step / neighbouring clean steps, median clean step seconds)."""
    ratios, clean = [], []
    for _ in range(rounds):
        before = seconds(lambda: stepper.step(0))
        attacked = seconds(lambda: stepper.step(k))
        after = seconds(lambda: stepper.step(0))
        ratios.append(attacked / ((before + after) / 2))
        clean += [before, after]
    return statistics.median(ratios), statistics.median(clean)


def compile_section(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.cpus)
    k, bound = 7, (2 * 7 + 3) / 3
    out: dict[str, Any] = {"bound": bound}
    print(f"\n2. torch.compile, {CASES[0].name}, {args.cpus} threads")
    for label, use in (("eager", False), ("compiled", True)):
        stepper = Stepper(CASES[0])
        stepper.model = compiled(stepper.model, RunOptions(compile=use), torch.device("cpu"))
        start = time.perf_counter()
        stepper.step(0)
        stepper.step(k)
        warm = time.perf_counter() - start
        attacked = statistics.median(seconds(lambda s=stepper: s.step(k)) for _ in range(3))
        ratio, clean = step_ratio(stepper, k, args.rounds)
        out[label] = {"pgd7_over_clean": ratio, "clean_step_s": clean, "pgd7_step_s": attacked,
                      "first_steps_s": warm}  # fmt: skip
        print(f"   {label:<8} clean step {1000 * clean:6.1f} ms, PGD-7 step {1000 * attacked:7.1f}"
              f" ms, PGD-7 / clean {ratio:.3f} against the bound {bound:.3f} "
              f"({100 * (ratio / bound - 1):+.1f}%); first two steps {warm:.1f} s")  # fmt: skip
    speed = out["eager"]["pgd7_step_s"] / out["compiled"]["pgd7_step_s"]
    out["compiled_speedup_pgd7"] = speed
    print(f"   compiled PGD-7 step {speed:.2f}x as fast as eager")
    return out


def precision_section(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.cpus)
    native = cpu_has_native_bf16()
    auto = DeviceSetup(torch.device("cpu"), RunOptions())
    out: dict[str, Any] = {"native_bf16": native, "auto_chooses_bf16": auto.bf16, "paths": {}}
    print(
        f"\n3. precision, {CASES[0].name} clean training step, {args.cpus} threads; native "
        f"bf16 here: {native}; precision auto chooses {'bf16' if auto.bf16 else 'fp32'}"
    )
    paths = (("fp32", "fp32", "false"), ("bf16", "bf16", "false"), ("bf16 + channels_last",
             "bf16", "true"))  # fmt: skip
    steppers = {}
    for label, precision, channels_last in paths:
        stepper = Stepper(CASES[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # emulated bf16 says so once: printed below
            stepper.setup = DeviceSetup(
                torch.device("cpu"), RunOptions(precision=precision, channels_last=channels_last)
            )
        stepper.model = stepper.setup.prepare_model(stepper.model)
        stepper.x = stepper.setup.prepare_batch(stepper.x)
        stepper.step(0)
        steppers[label] = stepper
    times: dict[str, list[float]] = {label: [] for label in steppers}
    for _ in range(args.precision_rounds):
        for label, stepper in steppers.items():
            times[label].append(seconds(lambda s=stepper: s.step(0)))
    fp32 = statistics.median(times["fp32"])
    for label, ts in times.items():
        t = statistics.median(ts)
        out["paths"][label] = {"step_s": t, "speedup_over_fp32": fp32 / t}
        print(f"   {label:<22} {1000 * t:8.1f} ms  ({fp32 / t:.2f}x fp32)")
    if not native:
        print("   (bf16 is emulated on this CPU: auto keeps fp32)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the folder")
    parser.add_argument("--loader-images", type=int, default=1000, help="images per pass")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="a trial's CPUs")
    parser.add_argument("--steps", type=int, default=5, help="steps of the tv_resnet18 timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (compile)")
    parser.add_argument("--precision-rounds", type=int, default=3)
    parser.add_argument("--folder", help="a folder of JPEGs written by an earlier run")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--only", choices=("loader", "precision", "compile"), help="one section")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor()}",
        "cpus": args.cpus,
    }
    sections: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"loader": loader_section}
    if not args.skip_compile:
        sections["compile"] = compile_section
    sections["precision"] = precision_section
    for name, section in sections.items():
        if args.only in (None, name):
            result[name] = section(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
