"""The registry of evaluation kinds: per kind, what it evaluates, its key, table, metrics and files.

Each kind is one entry. Its planner (PAPER.md sections 3-5) says which evaluations a trained
network (or, for the transfer baselines, the whole study) gets from the spec, each with its
eval_key, the table its row goes to and the row's identity columns; its metrics, summary and
artifacts say what the writer logs to MLflow, prints and attaches once a result comes back. The
planner (study/plan.py), the writer (study/recorder.py), `study status` and the parquet sink's
schemas (the evaluation tables are declared here) all read this registry, so adding a kind is
one entry here plus its evaluator in trainables/evals (register_evaluator) and its tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from trainables import storage
from trainables.config import (
    DataConfig,
    DatasetRef,
    EvalTask,
    FinetuneConfig,
    FisherConfig,
    InversionRequest,
    ProbeConfig,
    RobustnessConfig,
    TrainConfig,
    compute_key,
    file_pipeline,
    to_canonical,
)

if TYPE_CHECKING:
    from study.spec import SweepSpec
    from trainables.config import LoadRequest

Row = Mapping[str, Any]


@dataclass(frozen=True)
class PlannedEval:
    """One evaluation: its task, the table its row goes to, the row's identity columns."""

    task: EvalTask
    table: str
    row: dict[str, Any]
    name: str


@dataclass(frozen=True)
class PlanContext:
    """What every planner reads: the spec, where data is loaded from, the results folder."""

    spec: SweepSpec
    load: LoadRequest
    results_dir: str
    # The study's imported networks (their random-init baselines are planned with the grid's).
    networks: tuple[TrainConfig, ...] = ()


@dataclass(frozen=True)
class ArtifactContext:
    """Where an evaluation's files go: the study's results folder, and a local scratch folder
    for the copies that are logged to MLflow."""

    results_dir: str
    scratch: Path


NetworkPlanner = Callable[[PlanContext, TrainConfig, str], list[PlannedEval]]
StudyPlanner = Callable[[PlanContext], list[PlannedEval]]
Artifacts = Callable[[ArtifactContext, EvalTask, Row], list[Path]]


def no_artifacts(ctx: ArtifactContext, task: EvalTask, result: Row) -> list[Path]:
    return []


@dataclass(frozen=True)
class EvalTable:
    """A table of evaluation rows: its columns (in order) and the columns that key a row."""

    name: str
    columns: tuple[pa.Field, ...]
    key: tuple[str, ...] = ("eval_key",)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(list(self.columns))


@dataclass(frozen=True)
class EvaluationKind:
    """One kind of evaluation (EvalTask.kind), with everything the study does with it.

    Exactly one of plan_network (run on every trained network as its trial finishes) and
    plan_study (run once per study, such as the baselines) is set. metrics turns a result and
    its row into MLflow metrics; those starting with trial_prefix are logged on the trial's run
    too. settings_param names the MLflow param that holds the task's settings.
    """

    kind: str
    section: str
    table: str
    description: str
    metrics: Callable[[Row, Row], dict[str, float]]
    summary: Callable[[Row], str]
    settings_param: str
    trial_prefix: str = ""
    plan_network: NetworkPlanner | None = None
    plan_study: StudyPlanner | None = None
    artifacts: Artifacts = field(default=no_artifacts)


def grid_columns() -> list[pa.Field]:
    """The columns that place an evaluation row in the grid (after eval_key)."""
    return [
        pa.field("eval_key", pa.string(), nullable=False),
        pa.field("trial_key", pa.string()),
        pa.field("source", pa.string()),
        pa.field("arch", pa.string()),
        pa.field("norm", pa.string()),
        pa.field("attack", pa.string()),
        pa.field("eps", pa.float64()),
        pa.field("seed", pa.int64()),
    ]


def _tail(*columns: pa.Field) -> tuple[pa.Field, ...]:
    """A table's columns: the grid columns, its own, then wall_time_s and mlflow_run_id."""
    return (
        *grid_columns(),
        *columns,
        pa.field("wall_time_s", pa.float64()),
        pa.field("mlflow_run_id", pa.string()),
    )


# ----- the tables ---------------------------------------------------------------------------------
EVAL_TABLES: dict[str, EvalTable] = {}


def register_table(table: EvalTable) -> None:
    """Declare an evaluation table (the parquet sink writes every declared table)."""
    EVAL_TABLES[table.name] = table


_grid = grid_columns()
register_table(
    EvalTable(
        "transfer",
        (
            *_grid[:2],
            pa.field("kind", pa.string()),
            *_grid[2:],
            pa.field("target", pa.string()),
            pa.field("test_acc", pa.float64()),
            pa.field("train_acc", pa.float64()),
            pa.field("val_acc", pa.float64()),
            pa.field("c", pa.float64()),
            pa.field("n_train", pa.int64()),
            pa.field("n_test", pa.int64()),
            pa.field("feature_dim", pa.int64()),
            pa.field("wall_time_s", pa.float64()),
            pa.field("mlflow_run_id", pa.string()),
        ),
    )
)
register_table(
    EvalTable(
        "fisher",
        (
            *_grid[:2],
            # "trained", or "random_init": the untrained network of an (arch, seed), the scale's
            # reference (schema v4; older rows are trained ones).
            pa.field("kind", pa.string()),
            *_tail(
                pa.field("n_samples", pa.int64()),
                pa.field("sigma", pa.float64()),
                pa.field("layer", pa.string()),
                pa.field("input_method", pa.string()),
                pa.field("probes", pa.int64()),
                pa.field("input_trace", pa.float64()),
                pa.field("input_trace_stderr", pa.float64()),
                pa.field("input_eig", pa.float64()),
                pa.field("input_eig_stderr", pa.float64()),
                pa.field("weight_fisher", pa.string()),
                pa.field("weight_trace", pa.float64()),
                pa.field("weight_trace_stderr", pa.float64()),
                pa.field("weight_trace_per_layer", pa.map_(pa.string(), pa.float64())),
            )[2:],
        ),
    )
)
register_table(
    EvalTable(
        "robustness",
        _tail(
            pa.field("eval_eps", pa.float64()),
            pa.field("eval_attack", pa.string()),
            pa.field("n_samples", pa.int64()),
            pa.field("clean_acc", pa.float64()),
            pa.field("robust_acc", pa.float64()),
        ),
    )
)
register_table(
    EvalTable(
        "source",
        _tail(
            pa.field("eval_eps", pa.float64()),
            pa.field("eval_attack", pa.string()),
            pa.field("n_samples", pa.int64()),
            pa.field("test_acc_clean", pa.float64()),
            pa.field("test_acc_pgd", pa.float64()),
        ),
    )
)
register_table(
    EvalTable(
        "inversion",
        _tail(
            pa.field("variant", pa.string()),
            pa.field("n_images", pa.int64()),
            pa.field("steps", pa.int64()),
            pa.field("step_size", pa.float64()),
            pa.field("tv_weight", pa.float64()),
            pa.field("fisher_weight", pa.float64()),
            pa.field("psnr", pa.float64()),
            pa.field("ssim", pa.float64()),
            pa.field("relative_error", pa.float64()),
            pa.field("grid_path", pa.string()),
            # Schema v4: how the reconstruction was optimised, and the references beside it.
            pa.field("optimizer", pa.string()),
            pa.field("schedule", pa.string()),
            pa.field("start_psnr", pa.float64()),
            pa.field("start_ssim", pa.float64()),
            pa.field("mean_image_psnr", pa.float64()),
            pa.field("mean_image_ssim", pa.float64()),
            pa.field("start_relative_error", pa.float64()),
            pa.field("final_improvement", pa.float64()),
            pa.field("converged", pa.bool_()),
            # Schema v5: where the optimisation started and how many starts each image had.
            pa.field("start", pa.string()),
            pa.field("restarts", pa.int64()),
        ),
    )
)


# ----- shared helpers of the planners -------------------------------------------------------------
def source_classes(source: DatasetRef) -> int:
    """How many classes the networks of a source have (its class subset, or all)."""
    from trainables.catalog import get_dataset_info

    return (
        len(source.classes)
        if source.classes is not None
        else get_dataset_info(source.name).num_classes
    )


def trial_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The columns that place an evaluation row in the grid."""
    return {
        "source": cfg.source.id,
        "arch": cfg.arch.id,
        "norm": cfg.norm,
        "attack": cfg.attack_id,
        "eps": cfg.eps,
        "seed": cfg.seed,
    }


def of_network(
    ctx: PlanContext,
    cfg: TrainConfig,
    checkpoint: str,
    *,
    kind: str,
    key: str,
    name: str,
    settings: Any,
    row: Mapping[str, Any] | None = None,
    target: DatasetRef | None = None,
    artifact_path: str | None = None,
) -> PlannedEval:
    """An evaluation of the network that trial cfg trained (its final checkpoint)."""
    task = EvalTask(
        kind,
        key,
        cfg.data,
        settings,
        train=cfg,
        checkpoint=checkpoint,
        target=target,
        artifact_path=artifact_path,
        load=ctx.load,
    )
    identity = {"eval_key": key, "trial_key": cfg.key, **trial_identity(cfg), **(row or {})}
    return PlannedEval(task, EVALUATIONS[kind].table, identity, name)


def _transfer_metric(name: str) -> Callable[[Row, Row], dict[str, float]]:
    """transfer/<target>/<name> (and the probe's C where it chose one)."""

    def metrics(row: Row, result: Row) -> dict[str, float]:
        out = {f"transfer/{row['target']}/{name}": result["test_acc"]}
        if result.get("c") is not None:
            out[f"transfer/{row['target']}/c"] = result["c"]
        return out

    return metrics


def _probe_summary(result: Row) -> str:
    return f"acc {result['test_acc']:.3f} (C={result['c']:g})"


# ----- linear transfer and fine-tuning (PAPER.md section 3) ---------------------------------------
def transfer_key(trial_key: str, target: DatasetRef, data: DataConfig, probe: ProbeConfig) -> str:
    """The eval_key of a linear probe of one trained network on one target."""
    return compute_key("transfer", trial_key, target, data, probe, *file_pipeline(target))


def finetune_key(
    trial_key: str, target: DatasetRef, data: DataConfig, finetune: FinetuneConfig
) -> str:
    """The eval_key of full fine-tuning of a network on one target."""
    return compute_key("finetune", trial_key, target, data, finetune, *file_pipeline(target))


def plan_transfer(ctx: PlanContext, cfg: TrainConfig, checkpoint: str) -> list[PlannedEval]:
    """The linear probe of the network on each transfer target."""
    probe = ctx.spec.evaluations.transfer.to_config()
    return [
        of_network(
            ctx,
            cfg,
            checkpoint,
            kind="transfer",
            key=transfer_key(cfg.key, target, cfg.data, probe),
            name=f"transfer {target.id}",
            settings=probe,
            row={"kind": "probe", "target": target.id},
            target=target,
        )
        for target in ctx.spec.transfer_targets()
    ]


def plan_finetune(ctx: PlanContext, cfg: TrainConfig, checkpoint: str) -> list[PlannedEval]:
    """Full fine-tuning of the network on each target, when evaluations.transfer.finetune is on."""
    spec = ctx.spec.evaluations.transfer.finetune
    if not spec.enabled:
        return []
    finetune = spec.to_config(cfg.seed)
    return [
        of_network(
            ctx,
            cfg,
            checkpoint,
            kind="finetune",
            key=finetune_key(cfg.key, target, cfg.data, finetune),
            name=f"finetune {target.id}",
            settings=finetune,
            row={"kind": "finetune", "target": target.id},
            target=target,
        )
        for target in ctx.spec.transfer_targets()
    ]


# ----- the baselines: raw pixels and a randomly initialised network (PAPER.md section 3) ---------
def raw_pixel_key(target: DatasetRef, data: DataConfig, probe: ProbeConfig) -> str:
    """The eval_key of the raw-pixel baseline of one target."""
    return compute_key("raw_pixels", target, data, probe, *file_pipeline(target))


def random_init_key(cfg: TrainConfig, target: DatasetRef, probe: ProbeConfig) -> str:
    """The eval_key of the random-init baseline: same arch and source statistics, seed, target."""
    return compute_key(
        "random_init",
        cfg.source,
        cfg.arch,
        cfg.seed,
        target,
        cfg.data,
        probe,
        *file_pipeline(cfg.source, target),
    )


def plan_raw_pixels(ctx: PlanContext) -> list[PlannedEval]:
    """The probe on raw pixels, once per target."""
    transfer = ctx.spec.evaluations.transfer
    if not transfer.baselines:
        return []
    probe, data = transfer.to_config(), ctx.spec.data.to_config()
    out: dict[str, PlannedEval] = {}
    for target in ctx.spec.transfer_targets():
        key = raw_pixel_key(target, data, probe)
        task = EvalTask("raw_pixels", key, data, probe, target=target, load=ctx.load)
        row = {"eval_key": key, "trial_key": None, "kind": "raw_pixels", "target": target.id}
        out.setdefault(key, PlannedEval(task, "transfer", row, f"baseline raw pixels {target.id}"))
    return list(out.values())


def untrained_row(key: str, cfg: TrainConfig, **extra: Any) -> dict[str, Any]:
    """The identity of a row measured on the untrained network of cfg's (source, arch, seed):
    no trial, kind random_init, no norm, attack or eps."""
    return {
        "eval_key": key,
        "trial_key": None,
        "kind": "random_init",
        **extra,
        "source": cfg.source.id,
        "arch": cfg.arch.id,
        "seed": cfg.seed,
    }


def plan_random_init(ctx: PlanContext) -> list[PlannedEval]:
    """The probe on an untrained network, per (source, arch, seed) of the grid and target."""
    transfer = ctx.spec.evaluations.transfer
    if not transfer.baselines:
        return []
    probe = transfer.to_config()
    # The grid expanded once, and each (source, arch, seed, data) keyed once per target: the
    # key reads nothing else of a cell, and a 10,000-cell grid has a few hundred of them.
    configs = [*ctx.spec.baseline_configs(), *ctx.networks]
    out: dict[str, PlannedEval] = {}
    for target in ctx.spec.transfer_targets():
        seen: set[tuple[object, ...]] = set()
        for cfg in configs:
            cell = (cfg.source, cfg.arch, cfg.seed, cfg.data)
            if cell in seen:
                continue
            seen.add(cell)
            key = random_init_key(cfg, target, probe)
            if key in out:
                continue
            task = EvalTask(
                "random_init", key, cfg.data, probe, train=cfg, target=target, load=ctx.load
            )
            row = untrained_row(key, cfg, target=target.id)
            name = f"baseline random init {cfg.arch.id} seed={cfg.seed} {target.id}"
            out[key] = PlannedEval(task, "transfer", row, name)
    return list(out.values())


# ----- Fisher information (PAPER.md section 4) ----------------------------------------------------
def fisher_key(trial_key: str, fisher: FisherConfig) -> str:
    """The eval_key of the Fisher evaluation of one trained network."""
    return compute_key("fisher", trial_key, fisher)


def plan_fisher(ctx: PlanContext, cfg: TrainConfig, checkpoint: str) -> list[PlannedEval]:
    if not ctx.spec.evaluations.fisher.enabled:
        return []
    fisher = ctx.spec.evaluations.fisher.to_config()
    key = fisher_key(cfg.key, fisher)
    planned = of_network(
        ctx,
        cfg,
        checkpoint,
        kind="fisher",
        key=key,
        name="fisher",
        settings=fisher,
        row={"kind": "trained"},
    )
    return [planned]


def random_init_fisher_key(cfg: TrainConfig, fisher: FisherConfig) -> str:
    """The eval_key of the Fisher reference of an untrained network: arch, source, seed, data."""
    return compute_key(
        "fisher_random_init",
        cfg.source,
        cfg.arch,
        cfg.seed,
        cfg.data,
        fisher,
        *file_pipeline(cfg.source),
    )


def plan_random_init_fisher(ctx: PlanContext) -> list[PlannedEval]:
    """The Fisher of the untrained network of each (source, arch, seed) of the study (the
    random-init transfer baseline's network): where the Fisher scale starts."""
    spec = ctx.spec.evaluations.fisher
    if not spec.enabled or not spec.random_init:
        return []
    fisher = spec.to_config()
    out: dict[str, PlannedEval] = {}
    for cfg in [*ctx.spec.baseline_configs(), *ctx.networks]:
        key = random_init_fisher_key(cfg, fisher)
        if key in out:
            continue
        task = EvalTask("fisher_random_init", key, cfg.data, fisher, train=cfg, load=ctx.load)
        row = untrained_row(key, cfg)
        name = f"reference fisher random init {cfg.arch.id} seed={cfg.seed}"
        out[key] = PlannedEval(task, "fisher", row, name)
    return list(out.values())


def fisher_metrics(row: Row, result: Row) -> dict[str, float]:
    metrics = {
        "fisher/input_trace": result["input_trace"],
        "fisher/input_trace_stderr": result["input_trace_stderr"],
        "fisher/input_eig": result["input_eig"],
        "fisher/weight_trace": result["weight_trace"],
        "fisher/weight_trace_stderr": result["weight_trace_stderr"],
    }
    for layer, value in result["weight_trace_per_layer"].items():
        metrics[f"fisher/weight_trace/{layer}"] = value
    return metrics


def fisher_artifacts(ctx: ArtifactContext, task: EvalTask, result: Row) -> list[Path]:
    """The per-layer weight Fisher traces as JSON, in the results folder and on the run."""
    location = storage.join(ctx.results_dir, "artifacts", "fisher", f"{task.eval_key}.json")
    local = ctx.scratch / f"{task.eval_key}.json"
    local.write_text(json.dumps(result["weight_trace_per_layer"], indent=2, sort_keys=True))
    storage.upload_file(local, location)
    return [local]


# ----- robust accuracy ----------------------------------------------------------------------------
def robustness_key(trial_key: str, robustness: RobustnessConfig) -> str:
    """The eval_key of one robust-accuracy evaluation (radius, attack, sample) of a network."""
    return compute_key("robustness", trial_key, robustness)


def plan_robustness(ctx: PlanContext, cfg: TrainConfig, checkpoint: str) -> list[PlannedEval]:
    """Robust accuracy at each radius of evaluations.robustness, under the trial's norm."""
    spec = ctx.spec.evaluations.robustness
    if not spec.enabled:
        return []
    return [
        of_network(
            ctx,
            cfg,
            checkpoint,
            kind="robustness",
            key=robustness_key(cfg.key, rob),
            name=f"robustness {rob.id} eps={rob.eps:.4g}",
            settings=rob,
        )
        for rob in spec.configs(cfg.source.name, cfg.norm, source_classes(cfg.source), cfg.seed)
    ]


def robustness_metrics(row: Row, result: Row) -> dict[str, float]:
    name = f"robust/{result['eval_attack']}_eps{result['eval_eps']:.4g}"
    return {f"{name}/acc": result["robust_acc"], f"{name}/clean_acc": result["clean_acc"]}


# ----- the source accuracy of an imported network ------------------------------------------------
def source_accuracy_key(trial_key: str, robustness: RobustnessConfig) -> str:
    """The eval_key of an imported network's clean and PGD accuracy on its source test set."""
    return compute_key("source_accuracy", trial_key, robustness)


def plan_source_accuracy(ctx: PlanContext, cfg: TrainConfig, checkpoint: str) -> list[PlannedEval]:
    """What training would have reported of a network trained elsewhere: its clean accuracy and
    its accuracy under training.eval_attack at its own eps, on the whole source test split (as
    data.max_test_per_class caps it); nothing for a network trained here."""
    if not cfg.imported:
        return []
    attack = ctx.spec.training.eval_attack.to_config()
    settings = RobustnessConfig(cfg.eps, "pgd", attack, num_samples=SOURCE_SAMPLES)
    return [
        of_network(
            ctx,
            cfg,
            checkpoint,
            kind="source_accuracy",
            key=source_accuracy_key(cfg.key, settings),
            name=f"source accuracy {attack.id} eps={cfg.eps:.4g}",
            settings=settings,
        )
    ]


# Every source test image (the robustness evaluator takes min(num_samples, test size)).
SOURCE_SAMPLES = 1 << 31


def source_accuracy_metrics(row: Row, result: Row) -> dict[str, float]:
    return {"test/acc_clean": result["test_acc_clean"], "test/acc_pgd": result["test_acc_pgd"]}


# ----- inversion (PAPER.md section 5) -------------------------------------------------------------
def inversion_key(trial_key: str, request: InversionRequest) -> str:
    """The eval_key of one inversion variant of a network."""
    return compute_key("inversion", trial_key, request.config, request.num_images)


def plan_inversion(ctx: PlanContext, cfg: TrainConfig, checkpoint: str) -> list[PlannedEval]:
    """Each inversion variant (plain and regularised), its grid PNG in the results folder."""
    spec = ctx.spec.evaluations.inversion
    if not spec.enabled:
        return []
    out = []
    for variant, inversion in spec.configs():
        request = InversionRequest(inversion, spec.num_images)
        key = inversion_key(cfg.key, request)
        path = storage.join(ctx.results_dir, "artifacts", "inversion", f"{key}.png")
        out.append(
            of_network(
                ctx,
                cfg,
                checkpoint,
                kind="inversion",
                key=key,
                name=f"inversion {variant}",
                settings=request,
                row={"variant": variant},
                artifact_path=path,
            )
        )
    return out


def inversion_metrics(row: Row, result: Row) -> dict[str, float]:
    name = f"inversion/{row['variant']}"
    out = {
        f"{name}/psnr": result["psnr"],
        f"{name}/ssim": result["ssim"],
        f"{name}/relative_error": result["relative_error"],
        f"{name}/start_psnr": result["start_psnr"],
        f"{name}/final_improvement": result["final_improvement"],
        f"{name}/converged": float(result["converged"]),
    }
    if result.get("mean_image_psnr") is not None:
        out[f"{name}/mean_image_psnr"] = result["mean_image_psnr"]
    return out


def inversion_summary(result: Row) -> str:
    text = f"PSNR {result['psnr']:.1f} dB  SSIM {result['ssim']:.3f}"
    if result.get("mean_image_psnr") is not None:
        text += f" (mean image {result['mean_image_psnr']:.1f} dB)"
    text += f"  feature error {result['relative_error']:.3f}"
    return text + ("" if result.get("converged", True) else " (not settled)")


def inversion_artifacts(ctx: ArtifactContext, task: EvalTask, result: Row) -> list[Path]:
    """A local copy of the reconstruction grid (none when the evaluation wrote none)."""
    if not result.get("grid_path"):
        return []
    try:
        return [storage.local_copy(result["grid_path"], ctx.scratch)]
    except FileNotFoundError:
        return []


# ----- the registry -------------------------------------------------------------------------------
EVALUATIONS: dict[str, EvaluationKind] = {}


def register_evaluation(kind: EvaluationKind) -> None:
    """Add an evaluation kind (its table must be declared with register_table first)."""
    if kind.table not in EVAL_TABLES:
        raise KeyError(
            f"evaluation {kind.kind!r} writes to table {kind.table!r}, which is not declared: "
            f"register_table it first (declared: {', '.join(EVAL_TABLES)})"
        )
    if (kind.plan_network is None) == (kind.plan_study is None):
        raise ValueError(
            f"evaluation {kind.kind!r}: give exactly one of plan_network (per trained network) "
            "and plan_study (once per study)"
        )
    EVALUATIONS[kind.kind] = kind


for _kind in (
    EvaluationKind(
        "transfer",
        section="evaluations.transfer",
        table="transfer",
        description="linear probe of the frozen representation on each target",
        metrics=_transfer_metric("acc"),
        summary=_probe_summary,
        settings_param="probe",
        trial_prefix="transfer/",
        plan_network=plan_transfer,
    ),
    EvaluationKind(
        "finetune",
        section="evaluations.transfer.finetune",
        table="transfer",
        description="full fine-tuning of the network on each target",
        metrics=_transfer_metric("acc_finetune"),
        summary=lambda r: f"acc {r['test_acc']:.3f}",
        settings_param="finetune",
        trial_prefix="transfer/",
        plan_network=plan_finetune,
    ),
    EvaluationKind(
        "raw_pixels",
        section="evaluations.transfer.baselines",
        table="transfer",
        description="baseline: the probe on raw pixels of each target",
        metrics=_transfer_metric("acc_raw_pixels"),
        summary=_probe_summary,
        settings_param="probe",
        plan_study=plan_raw_pixels,
    ),
    EvaluationKind(
        "random_init",
        section="evaluations.transfer.baselines",
        table="transfer",
        description="baseline: the probe on an untrained network of each arch and seed",
        metrics=_transfer_metric("acc_random_init"),
        summary=_probe_summary,
        settings_param="probe",
        plan_study=plan_random_init,
    ),
    EvaluationKind(
        "fisher",
        section="evaluations.fisher",
        table="fisher",
        description="Fisher information of the representation about the input, of the weights",
        metrics=fisher_metrics,
        summary=lambda r: f"input {r['input_trace']:.4g}  weight {r['weight_trace']:.4g}",
        settings_param="fisher",
        trial_prefix="fisher/",
        plan_network=plan_fisher,
        artifacts=fisher_artifacts,
    ),
    EvaluationKind(
        "fisher_random_init",
        section="evaluations.fisher.random_init",
        table="fisher",
        description="reference: the same Fisher of an untrained network of each arch and seed",
        metrics=lambda row, result: {
            "fisher/input_trace": result["input_trace"],
            "fisher/weight_trace": result["weight_trace"],
        },
        summary=lambda r: f"input {r['input_trace']:.4g}  weight {r['weight_trace']:.4g}",
        settings_param="fisher",
        plan_study=plan_random_init_fisher,
    ),
    EvaluationKind(
        "robustness",
        section="evaluations.robustness",
        table="robustness",
        description="robust accuracy at fixed radii under the trial's norm",
        metrics=robustness_metrics,
        summary=lambda r: f"robust acc {r['robust_acc']:.3f} (clean {r['clean_acc']:.3f})",
        settings_param="robustness",
        trial_prefix="robust/",
        plan_network=plan_robustness,
    ),
    EvaluationKind(
        "source_accuracy",
        section="networks",
        table="source",
        description="an imported network's clean and PGD accuracy on its source test set",
        metrics=source_accuracy_metrics,
        summary=lambda r: f"clean {r['test_acc_clean']:.3f}  pgd {r['test_acc_pgd']:.3f}",
        settings_param="robustness",
        trial_prefix="test/",
        plan_network=plan_source_accuracy,
    ),
    EvaluationKind(
        "inversion",
        section="evaluations.inversion",
        table="inversion",
        description="inversion of the representation, plain and regularised (PSNR, SSIM)",
        metrics=inversion_metrics,
        summary=inversion_summary,
        settings_param="inversion",
        trial_prefix="inversion/",
        plan_network=plan_inversion,
        artifacts=inversion_artifacts,
    ),
):
    register_evaluation(_kind)


def evaluation_params(task: EvalTask) -> dict[str, Any]:
    """The MLflow params of an evaluation's run: its kind, target and settings."""
    params: dict[str, Any] = {"evaluation": task.kind}
    if task.target is not None:
        params["target"] = to_canonical(task.target)
    params[EVALUATIONS[task.kind].settings_param] = to_canonical(task.settings)
    return params


def evaluation_tables() -> list[str]:
    """The tables evaluation rows go to, in their declaration order."""
    return list(EVAL_TABLES)
