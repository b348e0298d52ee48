"""Synthetic studies with planted answers, written as real parquet parts in the sink's schemas.

Shared by the analysis tests (test_analysis_*.py); not a test module itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from study.sinks.parquet import SCHEMAS, schema_with_metadata

Value = Callable[[float, int], float]
SOURCE, ARCH, NORM, ATTACK = "cifar10", "resnet18", "l2", "pgd7"
EPS = (0.0, 0.25, 0.5, 1.0)
SEEDS = (0, 1, 2)
# Seed offsets that sum to zero, so the mean over seeds is exactly the planted value.
NOISE = {0: -1.0, 1: 0.0, 2: 1.0}


def write_table(results: Path, name: str, rows: Sequence[Mapping[str, Any]], part: int = 0) -> Path:
    """One part file of a table in the sink's schema (missing columns as nulls)."""
    schema = schema_with_metadata(name)
    folder = results / "tables" / name
    folder.mkdir(parents=True, exist_ok=True)
    full = [{f.name: row.get(f.name) for f in SCHEMAS[name]} for row in rows]
    path = folder / f"part-{part}.parquet"
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
    return path


def trial_key(eps: float, seed: int, source: str = SOURCE, attack: str = ATTACK) -> str:
    return f"{source}-{ARCH}-{NORM}-{attack}-{eps:g}-{seed}"


def grid(eps: float, seed: int, source: str = SOURCE, attack: str = ATTACK) -> dict[str, Any]:
    return {
        "trial_key": trial_key(eps, seed, source, attack),
        "source": source,
        "arch": ARCH,
        "norm": NORM,
        "attack": attack,
        "eps": eps,
        "seed": seed,
    }


def noisy(means: Mapping[float, float], scale: float) -> Value:
    """value(eps, seed) = the planted mean at eps plus a zero-mean seed offset of `scale`."""
    return lambda eps, seed: means[eps] + scale * NOISE.get(seed, 0.0)


def build_study(
    results: Path,
    *,
    eps: Sequence[float] = EPS,
    seeds: Sequence[int] = SEEDS,
    clean: Value | None = None,
    pgd: Value | None = None,
    transfer: Mapping[str, Value] | None = None,
    raw_pixels: Mapping[str, float] | None = None,
    random_init: Mapping[str, float] | None = None,
    input_trace: Value | None = None,
    weight_trace: Value | None = None,
    inversion: Mapping[str, tuple[Value, Value]] | None = None,
    grid_path: Callable[[float, int, str], str | None] | None = None,
    sources: Sequence[str] = (SOURCE,),
    fisher_random_init: tuple[float, float] | None = None,
    mean_image: tuple[float, float] | None = None,
) -> Path:
    """Write the tables of a synthetic study under results/tables and return results.

    Each table is written only when its values are given (an empty part otherwise, as the sink
    leaves it); every source gets the same planted values. Trained networks' fisher rows have
    no kind, as rows written before schema v4; fisher_random_init (input, weight) adds the
    untrained network's rows of each seed, mean_image (psnr, ssim) the inversion's
    no-information line on every inversion row.
    """
    trials, transfers, fishers, inversions = [], [], [], []
    for source in sources:
        for e in eps:
            for s in seeds:
                g = grid(e, s, source)
                trials.append(
                    {
                        **g,
                        "study": "synthetic",
                        "test_acc_clean": clean(e, s) if clean else 0.9,
                        "test_acc_pgd": pgd(e, s) if pgd else 0.5,
                    }
                )
                for target, value in (transfer or {}).items():
                    row = {**g, "eval_key": f"probe-{target}-{g['trial_key']}"}
                    transfers.append(
                        {**row, "kind": "probe", "target": target, "test_acc": value(e, s)}
                    )
                if input_trace or weight_trace:
                    fishers.append(
                        {
                            **g,
                            "eval_key": f"fisher-{g['trial_key']}",
                            "sigma": 1.0,
                            "weight_fisher": "true",
                            "input_trace": input_trace(e, s) if input_trace else None,
                            "weight_trace": weight_trace(e, s) if weight_trace else None,
                        }
                    )
                for variant, (psnr, ssim) in (inversion or {}).items():
                    inversions.append(
                        {
                            **g,
                            "eval_key": f"inv-{variant}-{g['trial_key']}",
                            "variant": variant,
                            "psnr": psnr(e, s),
                            "ssim": ssim(e, s),
                            "grid_path": grid_path(e, s, variant) if grid_path else None,
                            "mean_image_psnr": mean_image[0] if mean_image else None,
                            "mean_image_ssim": mean_image[1] if mean_image else None,
                        }
                    )
        for s in seeds if fisher_random_init else ():
            fishers.append(
                {
                    "eval_key": f"fisher-random-{source}-{s}",
                    "kind": "random_init",
                    "source": source,
                    "arch": ARCH,
                    "seed": s,
                    "sigma": 1.0,
                    "weight_fisher": "true",
                    "input_trace": fisher_random_init[0] * (1 + 0.01 * NOISE[s]),
                    "weight_trace": fisher_random_init[1] * (1 + 0.01 * NOISE[s]),
                }
            )
        for target, acc in (random_init or {}).items():
            for s in seeds:
                transfers.append(
                    {
                        "eval_key": f"random-{source}-{target}-{s}",
                        "kind": "random_init",
                        "source": source,
                        "arch": ARCH,
                        "seed": s,
                        "target": target,
                        "test_acc": acc,
                    }
                )
    for target, acc in (raw_pixels or {}).items():
        transfers.append(
            {"eval_key": f"raw-{target}", "kind": "raw_pixels", "target": target, "test_acc": acc}
        )
    write_table(results, "trials", trials)
    write_table(results, "transfer", transfers)
    write_table(results, "fisher", fishers)
    write_table(results, "inversion", inversions)
    write_table(results, "robustness", [])
    write_table(results, "epochs", [])
    return results
