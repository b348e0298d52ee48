"""What a study evaluates: every evaluation of a trained network, and the transfer baselines.

Pure planning (no Ray, MLflow or parquet): the Study submits what is not in its tables yet, and
benchmarks/bench_study.py runs the same tasks in a plain loop to measure the orchestration tax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from study.spec import SweepSpec
from trainables import storage
from trainables.config import (
    DataConfig,
    DatasetRef,
    FinetuneConfig,
    FisherConfig,
    InversionConfig,
    InversionRequest,
    ProbeConfig,
    RobustnessConfig,
    TrainConfig,
    compute_key,
)
from trainables.data import LoadRequest
from trainables.evals import EvalTask


@dataclass(frozen=True)
class PlannedEval:
    """One evaluation: its task, the table its row goes to, the row's identity columns."""

    task: EvalTask
    table: str
    row: dict[str, Any]
    name: str


def trial_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The columns that place an evaluation row in the grid."""
    return {
        "source": cfg.source.id,
        "arch": cfg.arch.id,
        "norm": cfg.norm,
        "attack": cfg.attack.id,
        "eps": cfg.eps,
        "seed": cfg.seed,
    }


def plan_trial_evaluations(
    spec: SweepSpec, cfg: TrainConfig, checkpoint: str, results_dir: str, load: LoadRequest
) -> list[PlannedEval]:
    """Every evaluation of the network trained by cfg (its final checkpoint)."""
    out: list[PlannedEval] = []
    ev = spec.evaluations
    ident = {"trial_key": cfg.key, **trial_identity(cfg)}

    def add(table: str, key: str, name: str, row: dict[str, Any], **task: Any) -> None:
        kind = task.pop("kind")
        evaluation = EvalTask(
            kind, key, cfg.data, train=cfg, checkpoint=checkpoint, load=load, **task
        )
        out.append(PlannedEval(evaluation, table, {"eval_key": key, **ident, **row}, name))

    probe = ev.transfer.to_config()
    finetune = ev.transfer.finetune
    for target in spec.transfer_targets():
        add(
            "transfer",
            transfer_key(cfg.key, target, cfg.data, probe),
            f"transfer {target.id}",
            {"kind": "probe", "target": target.id},
            kind="transfer",
            target=target,
            settings=probe,
        )
        if finetune.enabled:
            ft = finetune.to_config(cfg.seed)
            add(
                "transfer",
                finetune_key(cfg.key, target, cfg.data, ft),
                f"finetune {target.id}",
                {"kind": "finetune", "target": target.id},
                kind="finetune",
                target=target,
                settings=ft,
            )
    if ev.fisher.enabled:
        fisher = ev.fisher.to_config()
        add("fisher", fisher_key(cfg.key, fisher), "fisher", {}, kind="fisher", settings=fisher)
    if ev.robustness.enabled:
        for rob in ev.robustness.configs(cfg.source.name, cfg.norm):
            add(
                "robustness",
                robustness_key(cfg.key, rob),
                f"robustness {rob.id} eps={rob.eps:.4g}",
                {},
                kind="robustness",
                settings=rob,
            )
    if ev.inversion.enabled:
        n = ev.inversion.num_images
        for variant, inv in ev.inversion.configs():
            key = inversion_key(cfg.key, inv, n)
            path = storage.join(results_dir, "artifacts", "inversion", f"{key}.png")
            add(
                "inversion",
                key,
                f"inversion {variant}",
                {"variant": variant},
                kind="inversion",
                settings=InversionRequest(inv, n),
                artifact_path=path,
            )
    return out


def plan_baselines(spec: SweepSpec, load: LoadRequest) -> list[PlannedEval]:
    """Raw-pixel baselines per target; random-init ones per (source, arch, seed, target)."""
    ev = spec.evaluations.transfer
    if not ev.baselines:
        return []
    probe = ev.to_config()
    data = spec.data.to_config()
    out: list[PlannedEval] = []
    seen: set[str] = set()
    for target in spec.transfer_targets():
        key = raw_pixel_key(target, data, probe)
        if key not in seen:
            seen.add(key)
            task = EvalTask("raw_pixels", key, data, probe, target=target, load=load)
            row = {"eval_key": key, "trial_key": None, "kind": "raw_pixels", "target": target.id}
            out.append(PlannedEval(task, "transfer", row, f"baseline raw pixels {target.id}"))
        for cfg in spec.baseline_configs():
            key = random_init_key(cfg, target, probe)
            if key in seen:
                continue
            seen.add(key)
            task = EvalTask(
                "random_init", key, cfg.data, probe, train=cfg, target=target, load=load
            )
            row = {
                "eval_key": key,
                "trial_key": None,
                "kind": "random_init",
                "target": target.id,
                "source": cfg.source.id,
                "arch": cfg.arch.id,
                "seed": cfg.seed,
            }
            name = f"baseline random init {cfg.arch.id} seed={cfg.seed} {target.id}"
            out.append(PlannedEval(task, "transfer", row, name))
    return out


def transfer_key(trial_key: str, target: DatasetRef, data: DataConfig, probe: ProbeConfig) -> str:
    """The eval_key of a linear probe of one trained network on one target."""
    return compute_key("transfer", trial_key, target, data, probe)


def raw_pixel_key(target: DatasetRef, data: DataConfig, probe: ProbeConfig) -> str:
    """The eval_key of the raw-pixel baseline of one target."""
    return compute_key("raw_pixels", target, data, probe)


def random_init_key(cfg: TrainConfig, target: DatasetRef, probe: ProbeConfig) -> str:
    """The eval_key of the random-init baseline: same arch and source statistics, seed, target."""
    return compute_key("random_init", cfg.source, cfg.arch, cfg.seed, target, cfg.data, probe)


def fisher_key(trial_key: str, fisher: FisherConfig) -> str:
    """The eval_key of the Fisher evaluation of one trained network."""
    return compute_key("fisher", trial_key, fisher)


def robustness_key(trial_key: str, robustness: RobustnessConfig) -> str:
    """The eval_key of one robust-accuracy evaluation (radius, attack, sample) of a network."""
    return compute_key("robustness", trial_key, robustness)


def inversion_key(trial_key: str, inversion: InversionConfig, num_images: int) -> str:
    """The eval_key of one inversion variant of a network."""
    return compute_key("inversion", trial_key, inversion, num_images)


def finetune_key(
    trial_key: str, target: DatasetRef, data: DataConfig, finetune: FinetuneConfig
) -> str:
    """The eval_key of full fine-tuning of a network on one target."""
    return compute_key("finetune", trial_key, target, data, finetune)
