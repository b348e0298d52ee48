"""The sweep spec: pydantic models of a study's YAML, its validation, and its grid expansion.

Every key is checked (unknown keys are errors that suggest the closest valid one), every value
is checked against the registries and the rules of PAPER.md (eps in pixel units, Linf eps <= 1),
and a valid spec expands into frozen TrainConfig objects, each with its trial_key.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trainables import storage
from trainables.catalog import (
    STANDARD_RECIPE_SIZE,
    get_dataset_info,
    list_datasets,
    list_models,
)
from trainables.config import (
    FISHER_METHODS,
    WEIGHT_FISHER_TYPES,
    ArchRef,
    AttackConfig,
    DataConfig,
    DatasetRef,
    FinetuneConfig,
    FisherConfig,
    InversionConfig,
    OptimConfig,
    ProbeConfig,
    RobustnessConfig,
    RunOptions,
    TrainConfig,
    standard_eps,
)


class SpecError(ValueError):
    """A spec that cannot run: names the field, the value received and the fix, in one line."""


def spec_error(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error with a finished message; ctx 'field' and 'value' refine the location."""
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"), ctx or None)


class StrictModel(BaseModel):
    """Unknown keys are rejected with the closest valid key as a suggestion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = sorted(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
                    hint = (
                        f"did you mean {close[0]!r}?"
                        if close
                        else f"valid keys here: {', '.join(allowed)}"
                    )
                    raise spec_error(
                        "unknown_key",
                        f"unknown key {key!r}: {hint}",
                        field=str(key),
                        value=data[key],
                    )
        return data


def parse_eps(value: Any) -> Any:
    """Accept numbers and fractions written as strings ('8/255'), the way papers write Linf eps."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", value)
        if match is None:
            raise spec_error(
                "eps_format", "eps must be a number or a fraction such as '8/255'", value=value
            )
        return float(match.group(1)) / float(match.group(2))
    return value


class DatasetSpec(StrictModel):
    """A registered dataset and an optional class subset: {dataset: digits, classes: [0, 1]}."""

    dataset: str
    classes: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"dataset": data} if isinstance(data, str) else data

    @field_validator("dataset")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in list_datasets():
            raise spec_error(
                "unknown_dataset", f"unknown dataset: choose one of {', '.join(list_datasets())}"
            )
        return name

    @model_validator(mode="after")
    def _classes_exist(self) -> DatasetSpec:
        if self.classes is None:
            return self
        n = get_dataset_info(self.dataset).num_classes
        if len(self.classes) < 2:
            raise spec_error(
                "classes",
                "a class subset needs at least 2 classes: list more, or drop classes",
                field="classes",
                value=self.classes,
            )
        if len(set(self.classes)) != len(self.classes):
            raise spec_error(
                "classes",
                "a class is listed twice: list each once",
                field="classes",
                value=self.classes,
            )
        bad = [c for c in self.classes if not 0 <= c < n]
        if bad:
            raise spec_error(
                "classes",
                f"classes {bad} do not exist in {self.dataset}: use labels 0..{n - 1}",
                field="classes",
                value=self.classes,
            )
        return self

    def to_ref(self) -> DatasetRef:
        return DatasetRef(self.dataset, tuple(self.classes) if self.classes is not None else None)


class ArchSpec(StrictModel):
    """A registered arch and width multiplier: resnet18 or {name: resnet18, width: 0.25}."""

    name: str
    width: float = Field(1.0, gt=0, le=16)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in list_models():
            raise spec_error(
                "unknown_arch", f"unknown arch: choose one of {', '.join(list_models())}"
            )
        return name

    def to_ref(self) -> ArchRef:
        return ArchRef(self.name, self.width)


class GridSpec(StrictModel):
    """The cartesian grid: one training trial per (source, arch, norm, eps, seed)."""

    sources: list[DatasetSpec] = Field(min_length=1)
    archs: list[ArchSpec] = Field(min_length=1)
    norms: list[Literal["l2", "linf"]] = Field(min_length=1)
    eps: list[float] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    attacks: list[AttackSpec] | None = Field(None, min_length=1)

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, values: Any) -> Any:
        return [parse_eps(v) for v in values] if isinstance(values, list) else values

    @field_validator("eps")
    @classmethod
    def _eps_valid(cls, values: list[float]) -> list[float]:
        for i, v in enumerate(values):
            if not math.isfinite(v) or v < 0:
                raise spec_error(
                    "eps_value",
                    "eps must be a finite number >= 0 in pixel units of [0, 1] inputs: "
                    "use 0 for standard training or a positive radius",
                    field=str(i),
                    value=v,
                )
        if len(set(values)) != len(values):
            raise spec_error("eps_repeat", "eps repeats a value: list each once")
        return values

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values) or any(v < 0 for v in values):
            raise spec_error("seeds", "seeds must be distinct integers >= 0")
        return values

    @model_validator(mode="after")
    def _linf_in_pixel_units(self) -> GridSpec:
        if "linf" in self.norms:
            for i, v in enumerate(self.eps):
                if v > 1:
                    raise spec_error(
                        "linf_eps",
                        f"a linf eps above 1 cannot be in pixel units of [0, 1] inputs: "
                        f"write it as '{v:g}/255' (= {v / 255:.4f})",
                        field=f"eps.{i}",
                        value=v,
                    )
        return self


class AttackSpec(StrictModel):
    """How adversarial examples are made: pgd (steps, restarts), fgsm_rs, or free (replays).

    step_size defaults to 2.5 * eps / steps for pgd, 1.25 * eps for fgsm_rs and eps for free.
    """

    method: Literal["pgd", "fgsm_rs", "free"] = "pgd"
    steps: int = Field(7, ge=0, le=1000)
    step_size: float | None = Field(None, gt=0)
    random_start: bool = True
    restarts: int = Field(1, ge=1, le=100)
    replays: int = Field(4, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"method": data} if isinstance(data, str) else data

    def to_config(self) -> AttackConfig:
        return AttackConfig(
            method=self.method,
            steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start,
            restarts=self.restarts,
            replays=self.replays,
        )


class TrainingSpec(StrictModel):
    """Optimisation and the training/evaluation attacks (PAPER.md section 2).

    The defaults are the CIFAR recipe of the robustness library: SGD lr 0.1, momentum 0.9,
    weight decay 5e-4, batch 128, 150 epochs, lr x0.1 every 50 epochs, random crop and flip,
    PGD-7 for training and PGD-20 for the per-epoch robust accuracy.
    """

    epochs: int = Field(150, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "step"
    step_every: int = Field(50, ge=1)
    step_gamma: float = Field(0.1, gt=0, le=1)
    # standard: each source's own recipe, crop_flip below 128 px (CIFAR), resized_crop_flip
    # from 128 px (ImageNet: RandomResizedCrop of the decoded image; trainables.data.loader).
    augment: Literal["standard", "none", "flip", "crop_flip", "resized_crop_flip"] = "standard"
    crop_padding: int = Field(4, ge=0)
    attack: AttackSpec = AttackSpec()
    eval_attack: AttackSpec = AttackSpec(steps=20)
    deterministic: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto", "true", "false"] = "auto"
    # torch.compile of the network in the training step and the attack (not part of a key).
    compile: bool = False
    # The per-epoch robust (eval_attack) test accuracy every N epochs and at the last one; the
    # clean accuracy is measured every epoch. Not part of a trial's key: the network is the same.
    robust_eval_every: int = Field(1, ge=1)

    @field_validator("eval_attack")
    @classmethod
    def _eval_attack_is_an_attack(cls, v: AttackSpec) -> AttackSpec:
        if v.method == "free":
            raise spec_error(
                "eval_attack",
                "free is a training method, not an evaluation attack: use pgd",
                field="method",
                value=v.method,
            )
        return v

    def run_options(self) -> RunOptions:
        return RunOptions(
            precision=self.precision,
            channels_last=self.channels_last,
            robust_eval_every=self.robust_eval_every,
            compile=self.compile,
        )

    def augment_for(self, source: DatasetRef | None) -> str:
        """The augmentation of a source's trials: augment, with standard resolved by the
        source's resolution (crop_flip below 128 px, resized_crop_flip from 128 px)."""
        if self.augment != "standard":
            return self.augment
        if source is not None and get_dataset_info(source.name).size >= STANDARD_RECIPE_SIZE:
            return "resized_crop_flip"
        return "crop_flip"

    def to_config(self, source: DatasetRef | None = None) -> OptimConfig:
        return OptimConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            step_every=self.step_every,
            step_gamma=self.step_gamma,
            augment=self.augment_for(source),
            crop_padding=self.crop_padding,
        )


class DataSpec(StrictModel):
    """Where datasets live, whether torchvision may download them, and how they are split.

    The official test split is used where a dataset has one, test_fraction otherwise;
    max_per_class and max_test_per_class keep a seeded subsample of each class.
    """

    root: str | None = None
    download: bool = False
    # Processes that decode file-backed datasets, per trial or evaluation (None: by the CPUs
    # it holds, one always kept for itself; in-memory datasets use none). Not part of a key.
    workers: int | None = Field(None, ge=0)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)
    max_per_class: int | None = Field(None, ge=1)
    max_test_per_class: int | None = Field(None, ge=1)

    def to_config(self) -> DataConfig:
        return DataConfig(
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
            max_per_class=self.max_per_class,
            max_test_per_class=self.max_test_per_class,
        )


class FinetuneSpec(StrictModel):
    """Full fine-tuning on each transfer target, beside the linear probe (Salman et al.)."""

    enabled: bool = False
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)

    def to_config(self, seed: int) -> FinetuneConfig:
        return FinetuneConfig(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=seed,
        )


class TransferSpec(StrictModel):
    """Linear transfer targets and the probe's settings (PAPER.md section 3)."""

    targets: list[DatasetSpec] = Field(default_factory=list)
    c_grid: list[float] = Field([0.01, 0.1, 1.0, 10.0], min_length=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    max_iter: int = Field(500, ge=1)
    tol: float = Field(1e-6, gt=0)
    baselines: bool = True
    finetune: FinetuneSpec = FinetuneSpec()

    @field_validator("c_grid")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        for i, v in enumerate(values):
            if not (math.isfinite(v) and v > 0):
                raise spec_error(
                    "c_grid",
                    "a regularisation strength C must be a finite number > 0",
                    field=str(i),
                    value=v,
                )
        return values

    def to_config(self) -> ProbeConfig:
        return ProbeConfig(tuple(self.c_grid), self.val_fraction, self.max_iter, self.tol)


class FisherSpec(StrictModel):
    """Input and weight Fisher information (PAPER.md section 4).

    random_init: measure the same on the untrained network of each (source, arch, seed) too,
    the reference where the scale starts (the trade-off table and the Fisher figure show it).
    """

    enabled: bool = True
    random_init: bool = True
    num_samples: int = Field(128, ge=2)
    sigma: float = Field(1.0, gt=0)
    input_method: str = "hutchinson"
    probes: int = Field(16, ge=1)
    eigen_iters: int = Field(20, ge=0)
    layer: str | None = None
    weight_fisher: str = "true"
    seed: int = 0

    @field_validator("input_method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in FISHER_METHODS:
            raise spec_error("choice", f"unknown method: choose one of {', '.join(FISHER_METHODS)}")
        return v

    @field_validator("weight_fisher")
    @classmethod
    def _wf(cls, v: str) -> str:
        if v not in WEIGHT_FISHER_TYPES:
            raise spec_error(
                "choice", f"unknown weight Fisher: choose one of {', '.join(WEIGHT_FISHER_TYPES)}"
            )
        return v

    def to_config(self) -> FisherConfig:
        return FisherConfig(
            num_samples=self.num_samples,
            sigma=self.sigma,
            input_method=self.input_method,
            probes=self.probes,
            weight_fisher=self.weight_fisher,
            seed=self.seed,
            layer=self.layer,
            eigen_iters=self.eigen_iters,
        )


class RobustnessSpec(StrictModel):
    """Robust accuracy of every trained network at fixed radii, under the trial's norm.

    eps: numbers, fractions ('8/255') or 'standard' (the radius the literature reports for the
    source dataset and norm: 8/255 or 0.5 on CIFAR, 4/255 or 3.0 on ImageNet).

    autoattack: AutoAttack (torchattacks' standard version: APGD-CE, APGD-T, FAB-T, Square) at
    each radius beside PGD, as RobustBench reports robust accuracy. "auto" (the default) runs it
    when torchattacks is installed and the source has at least 4 classes (its targeted attacks
    compare the top 4 logits); true requires both; false runs PGD only. autoattack_eps,
    autoattack_samples and autoattack_seeds restrict it to some of the radii, to the first
    images of the num_samples and to the networks of some seeds (default: every radius, image
    and seed): its Square attack makes 5000 forward passes of every image it has not broken,
    which on a CPU dominates a study of small networks.
    """

    enabled: bool = True
    eps: list[float | Literal["standard"]] = Field(["standard"], min_length=1)
    attack: AttackSpec = AttackSpec(steps=20)
    autoattack: bool | Literal["auto"] = "auto"
    autoattack_eps: list[float | Literal["standard"]] | None = Field(None, min_length=1)
    autoattack_samples: int | None = Field(None, ge=1)
    autoattack_seeds: list[int] | None = Field(None, min_length=1)
    num_samples: int = Field(500, ge=1)
    seed: int = 0

    @field_validator("eps", "autoattack_eps", mode="before")
    @classmethod
    def _parse(cls, values: Any) -> Any:
        if not isinstance(values, list):
            return values
        return [v if v == "standard" else parse_eps(v) for v in values]

    @field_validator("eps", "autoattack_eps")
    @classmethod
    def _valid(cls, values: list[float | str] | None) -> list[float | str] | None:
        for i, v in enumerate(values or []):
            if v != "standard" and not (math.isfinite(float(v)) and float(v) > 0):
                raise spec_error(
                    "eps_value",
                    "an evaluation eps must be a finite number > 0 or 'standard'",
                    field=str(i),
                    value=v,
                )
        return values

    @field_validator("attack")
    @classmethod
    def _attack(cls, v: AttackSpec) -> AttackSpec:
        if v.method == "free":
            raise spec_error(
                "attack",
                "free is a training method, not an evaluation attack: use pgd",
                field="method",
                value=v.method,
            )
        return v

    @model_validator(mode="after")
    def _autoattack_radii(self) -> RobustnessSpec:
        for i, v in enumerate(self.autoattack_eps or []):
            if v not in self.eps:
                raise spec_error(
                    "autoattack_eps",
                    f"AutoAttack runs beside PGD at radii of eps, and {v} is not one of "
                    f"{self.eps}: add it to eps or leave it out of autoattack_eps",
                    field=f"autoattack_eps.{i}",
                    value=v,
                )
        return self

    def runs_autoattack(self, num_classes: int) -> bool:
        """Whether AutoAttack runs beside PGD on a source of num_classes classes."""
        if self.autoattack == "auto":
            return num_classes >= AUTOATTACK_MIN_CLASSES and autoattack_installed()
        return bool(self.autoattack)

    def configs(
        self, dataset: str, norm: str, num_classes: int, seed: int | None = None
    ) -> list[RobustnessConfig]:
        """One RobustnessConfig per radius and attack: PGD, plus AutoAttack when it runs (on a
        network of this seed, when autoattack_seeds lists some)."""
        info = get_dataset_info(dataset)

        def radius(v: float | str) -> float:
            return standard_eps(dataset, norm, info.size) if v == "standard" else float(v)

        autoattack = self.runs_autoattack(num_classes) and (
            self.autoattack_seeds is None or seed is None or seed in self.autoattack_seeds
        )
        aa_radii = {radius(v) for v in (self.autoattack_eps or self.eps)}
        aa_samples = min(self.autoattack_samples or self.num_samples, self.num_samples)
        attack = self.attack.to_config()
        out = []
        for eps in dict.fromkeys(radius(v) for v in self.eps):
            out.append(RobustnessConfig(eps, "pgd", attack, self.num_samples, self.seed))
            if autoattack and eps in aa_radii:
                out.append(RobustnessConfig(eps, "autoattack", attack, aa_samples, self.seed))
        return out


# AutoAttack's targeted attacks (APGD-T, FAB-T) compare the top 4 logits.
AUTOATTACK_MIN_CLASSES = 4


def autoattack_installed() -> bool:
    """Whether torchattacks, which runs AutoAttack, can be imported here."""
    import importlib.util

    try:
        return importlib.util.find_spec("torchattacks") is not None
    except (ImportError, ValueError):
        return False


class InversionVariantSpec(StrictModel):
    """One way of inverting: its name and regulariser weights (0 = the plain objective)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    tv_weight: float = Field(0.0, ge=0)
    fisher_weight: float = Field(0.0, ge=0)


class InversionSpec(StrictModel):
    """Inversion of the representation (PAPER.md section 5), plain and regularised.

    optimizer adam (step_size is its learning rate) or normalized (steps of L2 length
    step_size along the normalised gradient); schedule cosine decays the step size to 0 so that
    the reconstruction settles (the inversion table's final_improvement and converged say
    whether it did), constant keeps it. start mean_image begins at the source's mean image (the
    no-information guess) plus N(0, 1) / 20, noise at 0.5 + N(0, 1) / 20 (Engstrom et al.);
    restarts runs that many starts per image and keeps the one of smallest feature error."""

    enabled: bool = True
    num_images: int = Field(8, ge=1, le=256)
    steps: int = Field(400, ge=2)
    step_size: float = Field(0.1, gt=0)
    optimizer: Literal["adam", "normalized"] = "adam"
    schedule: Literal["cosine", "constant"] = "cosine"
    start: Literal["mean_image", "noise"] = "mean_image"
    restarts: int = Field(1, ge=1, le=64)
    variants: list[InversionVariantSpec] = Field(
        [InversionVariantSpec(name="plain"), InversionVariantSpec(name="tv", tv_weight=0.05)],
        min_length=1,
    )
    seed: int = 0

    @field_validator("variants")
    @classmethod
    def _unique(cls, values: list[InversionVariantSpec]) -> list[InversionVariantSpec]:
        names = [v.name for v in values]
        if len(set(names)) != len(names):
            raise spec_error("variants", "variant names must be distinct", value=names)
        return values

    def configs(self) -> list[tuple[str, InversionConfig]]:
        return [
            (
                v.name,
                InversionConfig(
                    self.steps,
                    self.step_size,
                    v.tv_weight,
                    v.fisher_weight,
                    self.seed,
                    self.optimizer,
                    self.schedule,
                    self.start,
                    self.restarts,
                ),
            )
            for v in self.variants
        ]


class EvaluationsSpec(StrictModel):
    """What runs on each trained network as soon as its training trial finishes."""

    transfer: TransferSpec = TransferSpec()
    fisher: FisherSpec = FisherSpec()
    robustness: RobustnessSpec = RobustnessSpec()
    inversion: InversionSpec = InversionSpec()


class OutputSpec(StrictModel):
    """Where results go: a local folder (relative to the directory the command runs in) or a
    URI (s3://bucket/prefix, gs://..., any fsspec protocol) that every node of a cluster reaches.
    A URI results_dir needs a tracking_uri: the SQLite default lives in a local results folder.

    lease_timeout_s: one driver at a time runs a study (its lease under RESULTS/lease, renewed
    every quarter of this); a driver silent for longer (killed, a lost head node) is taken over.
    """

    results_dir: str | None = None
    tracking_uri: str | None = None
    lease_timeout_s: float = Field(120.0, ge=1)

    @field_validator("results_dir")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is None or not storage.is_uri(value):
            return value
        import fsspec

        scheme = value.split("://", 1)[0].lower()
        if scheme not in {"s3", "gs", "gcs", "hdfs", "file", *fsspec.available_protocols()}:
            raise spec_error(
                "unknown_filesystem",
                f"no filesystem for {scheme}:// URIs: use a local path, s3://, gs://, or a "
                "protocol fsspec knows",
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _uri_needs_tracking_uri(self) -> OutputSpec:
        if self.results_dir and storage.is_remote(self.results_dir) and not self.tracking_uri:
            raise spec_error(
                "missing_tracking_uri",
                "results_dir is a URI, so the default MLflow store (a SQLite file in the results "
                "folder) cannot be used: set output.tracking_uri too, e.g. the cluster's MLflow "
                "server http://127.0.0.1:5000",
                field="tracking_uri",
                value=None,
            )
        return self


class ResourcesSpec(StrictModel):
    """Ray resources of each training trial and each evaluation task.

    GPUs may be fractional below one (gpus_per_trial: 0.25 packs four small models on a GPU);
    above one they must be whole. A request that no node type of the cluster can hold is an
    error before anything runs (checked against the live cluster, or a cluster.yaml).
    """

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    cpus_per_eval: float = Field(1.0, gt=0)
    gpus_per_eval: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    reuse_actors: bool = True

    @field_validator("gpus_per_trial", "gpus_per_eval")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise spec_error(
                "fractional_gpus",
                "Ray shares a GPU in fractions of one only: use a value <= 1 (e.g. 0.5) or a "
                "whole number of GPUs",
            )
        return value

    def requests(self) -> dict[str, tuple[float, float]]:
        """(CPUs, GPUs) of one trial and of one evaluation, by the prefix of their fields."""
        return {
            "trial": (self.cpus_per_trial, self.gpus_per_trial),
            "eval": (self.cpus_per_eval, self.gpus_per_eval),
        }


class RangeSpec(StrictModel):
    """A continuous search dimension: low..high, sampled on a log scale when log is true."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise spec_error(
                "range", "low must be below high, both finite", field="low", value=self.low
            )
        if self.log and self.low <= 0:
            raise spec_error(
                "log_range", "a log-scale range needs low > 0", field="low", value=self.low
            )
        return self


class SpaceSpec(StrictModel):
    """What a search varies: ranges (eps, lr, weight_decay) and choices (archs, norms)."""

    eps: RangeSpec | list[float] | None = None
    lr: RangeSpec | None = None
    weight_decay: RangeSpec | None = None
    archs: list[ArchSpec] | None = Field(None, min_length=1)
    norms: list[Literal["l2", "linf"]] | None = Field(None, min_length=1)

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, value: Any) -> Any:
        return [parse_eps(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _not_empty(self) -> SpaceSpec:
        if all(getattr(self, k) is None for k in type(self).model_fields):
            raise spec_error(
                "empty_space",
                "the search space is empty: give at least one of eps, lr, weight_decay, archs, "
                "norms",
            )
        if isinstance(self.eps, RangeSpec) and self.eps.low < 0:
            raise spec_error("eps_value", "eps must be >= 0", field="eps.low", value=self.eps.low)
        return self


class ObjectiveSpec(StrictModel):
    """One objective of a search: a metric every trial produces, and its direction."""

    metric: str
    direction: Literal["maximize", "minimize"] = "maximize"


class EarlyStoppingSpec(StrictModel):
    """ASHA on the per-epoch objective (single-objective searches only)."""

    method: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


# Short names of Optuna samplers; any class name in optuna.samplers works too.
SAMPLERS = {
    "tpe": "TPESampler",
    "nsga2": "NSGAIISampler",
    "nsga3": "NSGAIIISampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
}
SOURCE_METRICS = {"test_acc_clean": "test/acc_clean", "test_acc_pgd": "test/acc_pgd"}


def objective_metric(name: str) -> str:
    """The Tune metric of an objective: test/acc_clean, test/acc_pgd, objective/transfer/ID."""
    if name in SOURCE_METRICS:
        return SOURCE_METRICS[name]
    return "objective/transfer/" + name.split(":", 1)[1]


class SearchSpec(StrictModel):
    """An Optuna search instead of a grid: a sampler proposes each trial's eps, lr, arch...

    Objectives are test_acc_clean, test_acc_pgd (source, at the trial's last epoch) or
    transfer:TARGET (the linear probe on one of evaluations.transfer.targets, computed inside
    the trial at its end so that the sampler sees it).
    """

    source: DatasetSpec
    arch: ArchSpec | None = None
    norm: Literal["l2", "linf"] = "l2"
    seed: int = Field(0, ge=0)
    space: SpaceSpec
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    sampler: str = "tpe"
    sampler_seed: int = 0
    num_trials: int = Field(ge=1)
    max_concurrent: int = Field(2, ge=1)
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    storage: str | None = None

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, name: str) -> str:
        import optuna

        if name in SAMPLERS or (name.endswith("Sampler") and hasattr(optuna.samplers, name)):
            return name
        raise spec_error(
            "sampler",
            f"unknown Optuna sampler {name!r}: use one of {', '.join(SAMPLERS)} or a class name "
            "of optuna.samplers (e.g. TPESampler)",
        )

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.arch is None and self.space.archs is None:
            raise spec_error(
                "missing_arch",
                "a search needs an arch, or a list of archs in space.archs",
                field="arch",
                value=None,
            )
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise spec_error("objectives", "an objective is listed twice: list each once")
        if self.early_stopping.method == "asha" and (
            len(self.objectives) != 1 or names[0] not in SOURCE_METRICS
        ):
            raise spec_error(
                "asha",
                "ASHA stops trials on a per-epoch metric: use it with one objective, "
                "test_acc_clean or test_acc_pgd",
                field="early_stopping.method",
                value="asha",
            )
        return self

    def sampler_class(self) -> str:
        return SAMPLERS.get(self.sampler, self.sampler)

    def proposed_by(self) -> str:
        return f"optuna:{self.sampler}"

    def arch_choices(self) -> list[ArchSpec]:
        return list(self.space.archs) if self.space.archs else [self.arch]  # type: ignore[list-item]


# The checkpoint formats an imported network may be in (trainables/checkpoint_import.py's
# FORMATS, repeated here so that validating a spec imports no torch; a unit test keeps them
# equal).
CHECKPOINT_FORMATS = (
    "auto",
    "robustness",
    "robustbench",
    "torchvision",
    "state_dict",
    "safetensors",
)
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")
ROBUSTBENCH_THREATS = {"Linf": "linf", "L2": "l2"}
# The proposed_by of an imported network's trials row (a grid's is "grid", a search's
# "optuna:SAMPLER").
IMPORTED = "imported"


class NetworkSpec(StrictModel):
    """A network trained elsewhere, evaluated like a trained cell (issue: published networks).

    Either path (a local file, a URI such as s3://..., or an https URL fetched into the cache
    only with download: true) with its labels (arch, source, norm, eps; method and replicate
    optional), or a RobustBench model id ({robustbench: NAME, dataset: cifar10, threat_model:
    Linf}), read from RobustBench's cache layout models/DATASET/THREAT/NAME.pt under the data
    root. sha256, when given, must match the file. mean and std override the normalisation.
    """

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", max_length=120)
    path: str | None = None
    robustbench: str | None = None
    dataset: Literal["cifar10", "cifar100", "imagenet"] | None = None
    threat_model: Literal["Linf", "L2"] | None = None
    download: bool = False
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    format: str = "auto"
    arch: ArchSpec | None = None
    source: DatasetSpec | None = None
    norm: Literal["l2", "linf"] | None = None
    eps: float | None = None
    method: str = Field("pgd", pattern=r"^[A-Za-z0-9_.+-]+$")
    replicate: int = Field(0, ge=0)
    mean: list[float] | None = Field(None, min_length=1)
    std: list[float] | None = Field(None, min_length=1)

    @field_validator("eps", mode="before")
    @classmethod
    def _parse_eps(cls, value: Any) -> Any:
        return parse_eps(value)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in CHECKPOINT_FORMATS:
            raise spec_error(
                "format",
                f"unknown checkpoint format: choose one of {', '.join(CHECKPOINT_FORMATS)}",
            )
        return value

    @model_validator(mode="after")
    def _complete(self) -> NetworkSpec:
        if (self.path is None) == (self.robustbench is None):
            raise spec_error(
                "network_location",
                "give either path (a file, URI or https URL) or robustbench (a model id), "
                "not both and not neither",
                field="path",
                value=self.path,
            )
        if self.robustbench is not None:
            for key in ("dataset", "threat_model"):
                if getattr(self, key) is None:
                    raise spec_error(
                        "robustbench",
                        f"a RobustBench id needs its {key} (dataset: one of "
                        f"{', '.join(ROBUSTBENCH_DATASETS)}; threat_model: Linf or L2)",
                        field=key,
                        value=None,
                    )
        else:
            for key, fix in (
                ("arch", "the registered arch it was trained as (e.g. resnet50)"),
                ("source", "the dataset it was trained on"),
                ("norm", "the threat model it was trained against: l2 or linf"),
                ("eps", "the radius it was trained at (0 for a standard network)"),
            ):
                if getattr(self, key) is None:
                    raise spec_error(
                        "network_label", f"a network's {key} is missing: give {fix}", field=key
                    )
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps >= 0):
            raise spec_error(
                "eps_value", "eps must be a finite number >= 0", field="eps", value=self.eps
            )
        if self.eps is not None and self.eps > 1 and self.resolved_norm() == "linf":
            raise spec_error(
                "linf_eps",
                f"a linf eps above 1 cannot be in pixel units of [0, 1] inputs: write it as "
                f"'{self.eps:g}/255' (= {self.eps / 255:.4f})",
                field="eps",
                value=self.eps,
            )
        if (self.mean is None) != (self.std is None):
            raise spec_error(
                "normalization", "give both mean and std, or neither", field="mean", value=self.mean
            )
        if self.mean is not None and self.std is not None:
            channels = get_dataset_info(self.resolved_source().dataset).channels
            if len(self.mean) != channels or len(self.std) != channels:
                raise spec_error(
                    "normalization",
                    f"mean and std need one value per input channel ({channels})",
                    field="mean",
                    value=self.mean,
                )
            if any(v <= 0 for v in self.std):
                raise spec_error("normalization", "std must be > 0", field="std", value=self.std)
        return self

    def resolved_norm(self) -> str | None:
        if self.norm is not None:
            return self.norm
        return ROBUSTBENCH_THREATS.get(self.threat_model or "")

    def resolved_source(self) -> DatasetSpec:
        if self.source is not None:
            return self.source
        return DatasetSpec(dataset=str(self.dataset))

    def label(self) -> str:
        """A readable name: the entry's name, the RobustBench id or the file's name."""
        if self.name:
            return self.name
        if self.robustbench:
            return self.robustbench
        return str(self.path).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class SweepSpec(StrictModel):
    """A whole study: the grid (or a search), how to train, what to evaluate, where results go."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    description: str = ""
    grid: GridSpec | None = None
    search: SearchSpec | None = None
    networks: list[NetworkSpec] | None = Field(None, min_length=1)
    training: TrainingSpec = TrainingSpec()
    data: DataSpec = DataSpec()
    evaluations: EvaluationsSpec = EvaluationsSpec()
    output: OutputSpec = OutputSpec()
    resources: ResourcesSpec = ResourcesSpec()

    @model_validator(mode="after")
    def _grid_or_search(self) -> SweepSpec:
        if self.grid is not None and self.search is not None:
            raise spec_error(
                "grid_or_search",
                "give either grid (every cell trained) or search (an Optuna sampler proposes "
                "trials), not both",
                field="search",
                value="both",
            )
        if self.grid is None and self.search is None and self.networks is None:
            raise spec_error(
                "grid_or_search",
                "give a grid (every cell trained), a search (an Optuna sampler proposes trials) "
                "or networks (published checkpoints, evaluated without training)",
                field="grid",
                value=None,
            )
        if self.search is not None and self.networks is not None:
            raise spec_error(
                "search_networks",
                "a search proposes its own trials: evaluate published networks in a study "
                "with a grid, or with networks alone",
                field="networks",
                value=f"{len(self.networks)} networks",
            )
        names = [n.label() for n in self.networks or []]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise spec_error(
                "network_names",
                f"two networks are called {repeated[0]!r}: give each a distinct name",
                field="networks",
                value=repeated[0],
            )
        self._check_autoattack()
        if self.search is not None:
            targets = {t.to_ref().id for t in self.evaluations.transfer.targets}
            for i, objective in enumerate(self.search.objectives):
                name = objective.metric
                if name in SOURCE_METRICS:
                    continue
                if not (name.startswith("transfer:") and name.split(":", 1)[1] in targets):
                    known = [*SOURCE_METRICS, *(f"transfer:{t}" for t in sorted(targets))]
                    raise spec_error(
                        "objective",
                        f"no evaluation produces {name!r}: use one of {', '.join(known)} "
                        "(a transfer objective needs its target in evaluations.transfer.targets)",
                        field=f"search.objectives.{i}.metric",
                        value=name,
                    )
            asha = self.search.early_stopping.method == "asha"
            if (
                asha
                and self.training.robust_eval_every > 1
                and (self.search.objectives[0].metric == "test_acc_pgd")
            ):
                raise spec_error(
                    "asha_robust_eval",
                    "ASHA compares test_acc_pgd at every epoch, but robust_eval_every "
                    f"{self.training.robust_eval_every} measures it only every few epochs: set "
                    "training.robust_eval_every to 1 or use the objective test_acc_clean",
                    field="training.robust_eval_every",
                    value=self.training.robust_eval_every,
                )
            if self.search.storage is None and storage.is_remote(self.output.results_dir or ""):
                raise spec_error(
                    "search_storage",
                    "results_dir is a URI, so the default Optuna storage (a SQLite file in the "
                    "results folder) cannot be used: set search.storage to a database URL",
                    field="search.storage",
                    value=None,
                )
        return self

    def optuna_storage(self) -> str:
        """The Optuna storage URL of a search (default: optuna.db in the results folder)."""
        assert self.search is not None
        return self.search.storage or f"sqlite:///{storage.join(self.results_dir(), 'optuna.db')}"

    def base_config(self, arch: ArchSpec | None = None) -> TrainConfig:
        """A search's trial config before the sampler's values are applied."""
        assert self.search is not None
        se = self.search
        return TrainConfig(
            source=se.source.to_ref(),
            arch=(arch or se.arch_choices()[0]).to_ref(),
            norm=se.norm,
            eps=0.0,
            seed=se.seed,
            optim=self.training.to_config(se.source.to_ref()),
            attack=self.training.attack.to_config(),
            eval_attack=self.training.eval_attack.to_config(),
            data=self.data.to_config(),
            deterministic=self.training.deterministic,
        )

    def _check_autoattack(self) -> None:
        """autoattack: true needs torchattacks and sources of at least 4 classes."""
        robustness = self.evaluations.robustness
        if robustness.autoattack is not True or not robustness.enabled:
            return
        if not autoattack_installed():
            raise spec_error(
                "autoattack",
                "AutoAttack needs the torchattacks package, which is not installed: "
                "`pip install --no-deps 'torchattacks>=3.5'`, or set autoattack: auto (AutoAttack "
                "where it can run)",
                field="evaluations.robustness.autoattack",
                value=True,
            )
        for source in self.sources():
            classes = (
                len(source.classes)
                if source.classes is not None
                else get_dataset_info(source.dataset).num_classes
            )
            if classes < AUTOATTACK_MIN_CLASSES:
                raise spec_error(
                    "autoattack",
                    f"AutoAttack needs a source of at least {AUTOATTACK_MIN_CLASSES} classes "
                    f"(its targeted attacks compare the top 4 logits), and {source.dataset} has "
                    f"{classes} here: set autoattack: auto (PGD alone on such sources) or false",
                    field="evaluations.robustness.autoattack",
                    value=True,
                )

    def baseline_configs(self) -> list[TrainConfig]:
        """Configs whose (source, arch, seed) the random-init baselines cover."""
        if self.search is not None:
            return [self.base_config(a) for a in self.search.arch_choices()]
        return self.expand()

    def sources(self) -> list[DatasetSpec]:
        """The source datasets: the grid's or the search's, and those of the networks."""
        if self.search is not None:
            found = [self.search.source]
        else:
            found = list(self.grid.sources) if self.grid is not None else []
        return found + [n.resolved_source() for n in self.networks or []]

    def trial_count(self) -> int:
        """How many trials the study has: the grid's cells (or the search's budget), plus one
        per imported network."""
        base = self.search.num_trials if self.search is not None else len(self.expand())
        return base + len(self.networks or [])

    def results_dir(self) -> str:
        """The study's output folder (default results/NAME): an absolute local path or a URI."""
        location = self.output.results_dir or f"results/{self.name}"
        if storage.is_remote(location):
            return location
        return storage.resolve(location)[1]  # a local path (file:// URIs too), absolute

    def tracking_uri(self) -> str:
        """The MLflow tracking URI (default: a SQLite file in the results folder)."""
        if self.output.tracking_uri:
            return self.output.tracking_uri
        return f"sqlite:///{storage.join(self.results_dir(), 'mlflow.db')}"

    def expand(self) -> list[TrainConfig]:
        """One TrainConfig per grid cell, in the order source, arch, norm, eps, seed; none for
        a search (its trials are proposed as it runs)."""
        g = self.grid
        if g is None:
            return []
        attacks = [a.to_config() for a in (g.attacks or [self.training.attack])]
        eval_attack = self.training.eval_attack.to_config()
        data = self.data.to_config()
        # Each axis converted once, not once per cell: the cells share these frozen values.
        sources = [src.to_ref() for src in g.sources]
        optims = {src: self.training.to_config(src) for src in sources}
        archs = [arch.to_ref() for arch in g.archs]
        radii = [float(eps) for eps in g.eps]
        deterministic = self.training.deterministic
        return [
            TrainConfig(
                source=src,
                arch=arch,
                norm=norm,
                eps=eps,
                seed=seed,
                optim=optims[src],
                attack=attack,
                eval_attack=eval_attack,
                data=data,
                deterministic=deterministic,
            )
            for src, arch, norm, attack, eps, seed in itertools.product(
                sources, archs, g.norms, attacks, radii, g.seeds
            )
        ]

    def transfer_targets(self) -> list[DatasetRef]:
        return [t.to_ref() for t in self.evaluations.transfer.targets]


def format_validation_error(err: ValidationError) -> str:
    """The first error as one line: field = value: rule and fix."""
    first = err.errors()[0]
    # Drop pydantic's union-member tags (RangeSpec, list[float], function-after[...]).
    loc = [str(p) for p in first["loc"] if not ("[" in str(p) or re.fullmatch(r"[A-Z]\w*", str(p)))]
    ctx = first.get("ctx") or {}
    value = ctx.get("value", first.get("input"))
    if "field" in ctx:
        loc += str(ctx["field"]).split(".")
    field = ".".join(loc) or "spec"
    kind = first["type"]
    if kind == "missing":
        return f"{field} is missing: add it (sweeps/demo.yaml shows every key)"
    if kind == "too_short":
        return f"{field} is empty: list at least one value"
    return f"{field} = {value!r}: {first['msg']}"


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every problem is a SpecError of one line."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} not found: check the path (sweeps/ has examples)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}: fix the syntax there") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping with name and grid keys")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {format_validation_error(exc)}") from exc
