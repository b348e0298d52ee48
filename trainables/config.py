"""Frozen configurations of one training trial and its evaluations: plain data, no behaviour.

The study layer builds these from a sweep spec; everything in `trainables` takes them as
arguments. Their canonical JSON is what a trial_key or eval_key hashes, so every field here is
something that changes a result, and nothing else (no paths, no resources, no study name).
The choices a spec is checked against (FISHER_METHODS, WEIGHT_FISHER_TYPES, STANDARD_EPS) are
here too: this module imports no torch, so validating a spec does not pay for importing it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
from dataclasses import dataclass, field
from typing import Any

# Bumped when a change to the code changes results for the same config, so old cache entries
# are not reused for new semantics.
KEY_VERSION = 1

# Bumped when the way image files become tensors changes (the train and test views of
# trainables.data.loader): only the keys that involve a file-backed dataset carry it, so that
# in-memory sources and targets keep theirs. 2: resize 256 + centre crop 224 at test time,
# RandomResizedCrop on the decoded image at train time.
FILE_PIPELINE_VERSION = 2


def file_pipeline(*datasets: DatasetRef) -> tuple[dict[str, int], ...]:
    """The key part that versions the file pipeline: one entry when any dataset is read from
    image files, none otherwise (a name not registered in this process counts as in memory)."""
    from trainables.catalog import get_dataset_info

    for ref in datasets:
        try:
            if get_dataset_info(ref.name).files:
                return ({"file_pipeline": FILE_PIPELINE_VERSION},)
        except KeyError:
            continue
    return ()


@dataclass(frozen=True)
class DatasetRef:
    """A dataset and an optional subset of its classes (relabelled 0..k-1 in the given order)."""

    name: str
    classes: tuple[int, ...] | None = None

    @property
    def id(self) -> str:
        """A short readable name, used in metric names and table columns: digits, digits-c01234."""
        if self.classes is None:
            return self.name
        return f"{self.name}-c" + "".join(str(c) if c < 10 else f"_{c}_" for c in self.classes)


@dataclass(frozen=True)
class DataConfig:
    """How a dataset is split and subsampled (its location is not part of the key).

    The official test split is used where a dataset has one; test_fraction applies otherwise.
    max_per_class and max_test_per_class cap the items of each class (seeded by split_seed).
    """

    test_fraction: float = 0.3
    split_seed: int = 0
    max_per_class: int | None = None
    max_test_per_class: int | None = None


@dataclass(frozen=True)
class ArchRef:
    """A registered architecture and its width multiplier."""

    name: str
    width: float = 1.0

    @property
    def id(self) -> str:
        return self.name if self.width == 1.0 else f"{self.name}-w{self.width:g}"


ATTACK_METHODS = ("pgd", "fgsm_rs", "free")


@dataclass(frozen=True)
class AttackConfig:
    """How adversarial examples are made (PAPER.md section 2).

    method pgd: PGD-steps with a random start and `restarts` restarts, step 2.5 * eps / steps by
    default (Madry et al.); fgsm_rs: one step from a random start, 1.25 * eps by default (Wong
    et al. 2020); free: "free" adversarial training, each minibatch replayed `replays` times with
    a perturbation carried across replays and minibatches, step eps by default (Shafahi et al.).
    """

    method: str = "pgd"
    steps: int = 7
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    replays: int = 4

    def alpha(self, eps: float) -> float:
        """The step size in pixel units for a given eps."""
        if self.step_size is not None:
            return self.step_size
        if self.method == "fgsm_rs":
            return 1.25 * eps
        if self.method == "free":
            return eps
        return 2.5 * eps / max(self.steps, 1)

    @property
    def id(self) -> str:
        """A short name: pgd7, pgd20x5 (restarts), fgsm_rs, free4."""
        if self.method == "pgd":
            return f"pgd{self.steps}" + (f"x{self.restarts}" if self.restarts > 1 else "")
        if self.method == "free":
            return f"free{self.replays}"
        return self.method


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (PAPER.md section 2 gives the CIFAR recipe)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_every: int = 50
    step_gamma: float = 0.1
    augment: str = "none"
    crop_padding: int = 4


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one adversarially trained network."""

    source: DatasetRef
    arch: ArchRef
    norm: str
    eps: float
    seed: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    eval_attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=20))
    data: DataConfig = field(default_factory=DataConfig)
    deterministic: bool = False

    @functools.cached_property
    def key(self) -> str:
        """The trial_key: computed once per object (a frozen config never changes), kept in the
        instance's __dict__ beside the fields, never in asdict, to_canonical, == or a pickle."""
        return compute_key("train", self, *file_pipeline(self.source))

    @property
    def attack_id(self) -> str:
        """The attack column of the tables: the training attack (pgd7, fgsm_rs, free4)."""
        return self.attack.id

    @property
    def imported(self) -> bool:
        """Whether the network was trained elsewhere (an ImportedConfig) rather than here."""
        return False

    def __getstate__(self) -> dict[str, Any]:
        # A pickle carries the fields only: the receiving process recomputes the key with its
        # own code (and KEY_VERSION), and the pickled bytes are those of an uncached config.
        state = dict(self.__dict__)
        state.pop("key", None)
        return state


@dataclass(frozen=True)
class ImportedConfig(TrainConfig):
    """A network trained elsewhere (a published checkpoint), placed in the grid by its labels.

    source, arch, norm and eps say what it is (eps: the radius it was trained at, as its
    authors report it), seed is its replicate label and method the training-method label
    (pgd, trades, fast, ...), the attack column of the tables. sha256 is the checksum of the
    checkpoint file's bytes, so that changing the file re-evaluates the network; mean and std
    override the normalisation the file holds. The optimisation and attack fields keep their
    defaults: nothing is trained. name is a readable label, outside the key.
    """

    sha256: str = ""
    method: str = "pgd"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    name: str = ""

    @functools.cached_property
    def key(self) -> str:
        """The trial_key of an imported network: its file's sha256, labels and data split."""
        canonical = to_canonical(self)
        canonical.pop("name")
        return compute_key("imported", canonical, *file_pipeline(self.source))

    @property
    def attack_id(self) -> str:
        return self.method

    @property
    def imported(self) -> bool:
        return True


@dataclass(frozen=True)
class RunOptions:
    """How a trial runs on its device; not part of its key (results agree up to rounding).

    precision auto: bf16 autocast on CUDA and on a CPU with native bf16 (AVX-512 BF16 or AMX,
    as torch reports it), fp32 elsewhere (emulated bf16 is many times slower than fp32);
    channels_last auto: on wherever bf16 is. compile: the network through torch.compile, in the
    attack and the weight update alike (off by default; benchmarks/bench_data.py measures it).
    robust_eval_every: the per-epoch PGD test accuracy every this many epochs and at the last
    (it costs about as much as the training epoch on small data); NaN in the other epochs.
    """

    precision: str = "auto"
    channels_last: str = "auto"
    robust_eval_every: int = 1
    compile: bool = False


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probe: multinomial logistic regression with L2 strength chosen on validation."""

    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    val_fraction: float = 0.2
    max_iter: int = 500
    tol: float = 1e-6


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimisation of full fine-tuning (Salman et al. 2020): every weight trained on a target."""

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


# How the input Fisher trace is computed (full Jacobian, or Hutchinson's estimator), and which
# labels the weight Fisher's gradients use (sampled from the model, or the dataset's).
FISHER_METHODS = ("exact", "hutchinson")
INVERSION_OPTIMIZERS = ("adam", "normalized")
INVERSION_SCHEDULES = ("cosine", "constant")
INVERSION_STARTS = ("mean_image", "noise")
WEIGHT_FISHER_TYPES = ("true", "empirical")


@dataclass(frozen=True)
class FisherConfig:
    """Fisher information settings (PAPER.md section 4)."""

    num_samples: int = 128
    sigma: float = 1.0
    input_method: str = "hutchinson"
    probes: int = 16
    weight_fisher: str = "true"
    seed: int = 0
    layer: str | None = None
    eigen_iters: int = 20


@dataclass(frozen=True)
class RobustnessConfig:
    """Robust accuracy at one radius: PGD (attack's steps and restarts) or AutoAttack."""

    eps: float
    method: str = "pgd"
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(steps=20))
    num_samples: int = 500
    seed: int = 0

    @property
    def id(self) -> str:
        return "autoattack" if self.method == "autoattack" else self.attack.id


# (dataset, norm) -> eps in pixel units: RobustBench's CIFAR and ImageNet settings, and the
# classic MNIST radii (Madry et al.). Datasets not listed use their resolution's entry.
STANDARD_EPS: dict[tuple[str, str], float] = {
    ("cifar10", "linf"): 8 / 255,
    ("cifar10", "l2"): 0.5,
    ("cifar100", "linf"): 8 / 255,
    ("cifar100", "l2"): 0.5,
    ("imagenet", "linf"): 4 / 255,
    ("imagenet", "l2"): 3.0,
    ("mnist", "linf"): 0.3,
    ("mnist", "l2"): 2.0,
    ("fashion_mnist", "linf"): 0.1,
    ("fashion_mnist", "l2"): 1.5,
}


def standard_eps(dataset: str, norm: str, size: int) -> float:
    """The usual reporting radius for a dataset and norm (by resolution when not listed)."""
    if (dataset, norm) in STANDARD_EPS:
        return STANDARD_EPS[(dataset, norm)]
    if size >= 128:
        return STANDARD_EPS[("imagenet", norm)]
    return STANDARD_EPS[("cifar10", norm)]


@dataclass(frozen=True)
class InversionConfig:
    """Steps, step size, optimiser, schedule and regulariser weights of an inversion (PAPER.md
    section 5).

    optimizer "adam": Adam on the pixels with learning rate step_size; "normalized": steps of
    L2 length step_size along the normalised gradient (Engstrom et al.'s). schedule "cosine"
    decays the step size to 0 over the steps, so that the iterates settle; "constant" keeps it.
    start "mean_image": the source's mean image plus N(0, 1) / 20 (the no-information guess);
    "noise": 0.5 + N(0, 1) / 20 (Engstrom et al.'s). restarts: independent starts per image,
    of which the one with the smallest final feature error is kept.
    """

    steps: int = 400
    step_size: float = 0.1
    tv_weight: float = 0.0
    fisher_weight: float = 0.0
    seed: int = 0
    optimizer: str = "adam"
    schedule: str = "cosine"
    start: str = "mean_image"
    restarts: int = 1


@dataclass(frozen=True)
class InversionRequest:
    """One inversion evaluation: its config and how many source test images it reconstructs.

    num_images stays out of InversionConfig: the inversion's eval_key hashes (trial_key,
    InversionConfig, num_images) as separate parts, and folding it in would change every key.
    """

    config: InversionConfig
    num_images: int = 8


@functools.cache
def _sorted_field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names in sorted order (what asdict's keys sort to)."""
    return tuple(sorted(f.name for f in dataclasses.fields(cls)))


# Values returned as they are (float(x) of a float is x: the integer rule below only turns a
# float subclass into a float).
_LEAVES = frozenset({str, int, float, bool, type(None)})


def to_canonical(obj: Any) -> Any:
    """A JSON-ready form with sorted keys and tuples as lists, stable across runs."""
    tp: type = type(obj)
    if tp in _LEAVES:
        return obj  # most of a config's values: answered before the checks below
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        # The fields read directly: the same form as to_canonical(asdict(obj)) without
        # asdict's deep copy of every leaf, which made up most of the time of a key.
        return {name: to_canonical(getattr(obj, name)) for name in _sorted_field_names(tp)}
    if isinstance(obj, dict):
        return {str(k): to_canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [to_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        # 1 and 1.0 are the same eps: hash them the same.
        return float(obj)
    return obj


# json.dumps(..., sort_keys=True, separators=(",", ":")) builds an encoder per call; one built
# once with the same settings writes the same bytes.
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def compute_key(kind: str, *parts: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a kind and its config parts."""
    payload = _KEY_ENCODER.encode(
        {"kind": kind, "version": KEY_VERSION, "parts": [to_canonical(p) for p in parts]}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def from_canonical(tp: Any, value: Any) -> Any:
    """Rebuild a value of type tp (a dataclass, possibly nested, tuples of them, optionals)
    from its canonical JSON form: the inverse of to_canonical for the configs here."""
    import typing

    origin = typing.get_origin(tp)
    # isinstance(tp, type): is_dataclass is also true of an instance; tp here is always a class.
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{k: from_canonical(hints[k], v) for k, v in value.items()})
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is not None:
            return tuple(from_canonical(item, v) for v in value)
        if args and len(args) == len(value):
            return tuple(from_canonical(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            if arg is not type(None):
                return from_canonical(arg, value)
    return value


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of dataclasses.asdict for TrainConfig (used where configs cross processes)."""
    result: TrainConfig = from_canonical(TrainConfig, data)
    return result


@dataclass(frozen=True)
class LoadRequest:
    """Where to look for a dataset and whether torchvision may download it (not part of a
    key: the same data read from another folder gives the same result)."""

    root: str | None = None
    download: bool = False
    # Worker processes that decode a file-backed dataset (None: by the CPUs the process holds;
    # trainables.data.loader.plan_workers). In-memory datasets need none.
    workers: int | None = None


@dataclass(frozen=True)
class EvalTask:
    """One evaluation to run: what kind, on which trained network (checkpoint), with what.

    settings is the kind's frozen config: ProbeConfig (transfer, random_init, raw_pixels),
    FinetuneConfig, FisherConfig, RobustnessConfig or InversionRequest, or a registered kind's.
    """

    kind: str
    eval_key: str
    data: DataConfig
    settings: object
    train: TrainConfig | None = None
    checkpoint: str | None = None
    target: DatasetRef | None = None
    artifact_path: str | None = None
    load: LoadRequest = field(default_factory=LoadRequest)
