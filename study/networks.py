"""A study's published networks: each entry's file found, checksummed and checked before any run.

`resolve_networks` turns spec.networks into Networks: the checkpoint file on this machine
(fetched into the cache when the entry allows it), its sha256, and the ImportedConfig whose
trial_key the tables know it by. With check on, each file is loaded onto its arch, which is what
`study validate` and the start of `study run` do: any problem is one SpecError line naming the
entry, the value and the fix, before anything is written. A RobustBench id is resolved to its
architecture and radius through the optional `robustbench` package, and its weights are read
from RobustBench's own cache layout (models/DATASET/THREAT/NAME.pt) under the data root.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.spec import (
    ROBUSTBENCH_THREATS,
    ArchSpec,
    DatasetSpec,
    NetworkSpec,
    SpecError,
    SweepSpec,
)
from trainables import storage
from trainables.config import ImportedConfig, LoadRequest, standard_eps

# How to install the optional package without its pins (which would replace this project's
# versions): robustbench 1.1.1 imports timm, gdown, geotorch, torchdiffeq, bs4, pkg_resources
# (setuptools < 80) and autoattack, which only GitHub has (PyPI's pyautoattack is another module).
ROBUSTBENCH_INSTALL = (
    "pip install --no-deps robustbench==1.1.1 timm==1.0.9 gdown==5.1.0 geotorch torchdiffeq "
    "huggingface_hub beautifulsoup4 soupsieve 'setuptools<80' "
    "git+https://github.com/fra31/auto-attack"
)


@dataclass(frozen=True)
class Network:
    """One entry of spec.networks, found: its file here, and the config it is keyed by."""

    index: int
    entry: NetworkSpec
    local: Path
    config: ImportedConfig

    @property
    def format(self) -> str:
        return "robustbench" if self.entry.robustbench else self.entry.format

    @property
    def location(self) -> str:
        return str(self.entry.path) if self.entry.path else str(self.local)


def checkpoint_cache(load: LoadRequest) -> Path:
    """Where downloaded checkpoints are kept: a local data root, else ~/.cache/atsweep."""
    if load.root and not storage.is_uri(load.root):
        return Path(load.root)
    return Path.home() / ".cache" / "atsweep"


def robustbench_path(entry: NetworkSpec, load: LoadRequest) -> Path:
    """RobustBench's own cache layout: models/DATASET/THREAT/NAME.pt under the data root."""
    return (
        checkpoint_cache(load)
        / "models"
        / str(entry.dataset)
        / str(entry.threat_model)
        / f"{entry.robustbench}.pt"
    )


def _entry_error(index: int, entry: NetworkSpec, message: str) -> SpecError:
    """One line: the entry, what is wrong and the fix (a multi-line import error joined)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    return SpecError(f"networks.{index} ({entry.label()}): {'; '.join(lines)}")


def robustbench_architecture(module: Any) -> tuple[str, float]:
    """(our arch, width) of a RobustBench network built on the meta device, from its class and
    its depth and width as its layers show them; ValueError for a kind we have no arch for."""
    kind, name = type(module).__name__, ""
    if kind == "DMWideResNet":
        # Our wrn70_16 is the DeepMind layout with Swish; other depths or a ReLU one are not.
        blocks = len(module.layer[0].block)
        width = module.logits.in_features / 64
        activation = type(module.layer[0].block[0].relu_0).__name__
        kind = f"DMWideResNet-{6 * blocks + 4}-{width:g} ({activation})"
        if (blocks, width, activation) == (11, 16, "Swish"):
            name = "wrn70_16"
    elif kind == "WideResNet":  # the TRADES layout
        blocks = len(module.block1.layer)
        width = module.fc.in_features / 64
        kind = f"WideResNet-{6 * blocks + 4}-{width:g}"
        if (blocks, width) in ((4, 10), (5, 10)):
            name = f"wrn{6 * blocks + 4}_10"
    if not name:
        raise ValueError(
            f"its network is a {kind}, which no registered arch reproduces (RobustBench's that "
            "do: WideResNet-28-10, WideResNet-34-10, DMWideResNet-70-16 with Swish)"
        )
    return name, 1.0


def resolve_robustbench(index: int, entry: NetworkSpec) -> NetworkSpec:
    """The entry with its arch, source, norm and eps filled in from RobustBench's model zoo
    (labels the entry gives itself are kept)."""
    source = entry.resolved_source()
    norm = entry.resolved_norm()
    if entry.arch is not None:
        arch = entry.arch
    else:
        zoo_module = _import_robustbench(
            index,
            entry,
            "robustbench.model_zoo",
            "resolving a RobustBench id to its architecture",
            "or give arch in the entry",
        )
        enums = _import_robustbench(
            index, entry, "robustbench.model_zoo.enums", "resolving a RobustBench id", ""
        )
        import torch

        model_dicts = zoo_module.model_dicts
        BenchmarkDataset, ThreatModel = enums.BenchmarkDataset, enums.ThreatModel

        zoo = model_dicts[BenchmarkDataset(entry.dataset)][ThreatModel(entry.threat_model)]
        if entry.robustbench not in zoo:
            raise _entry_error(
                index,
                entry,
                f"RobustBench has no {entry.dataset} {entry.threat_model} model "
                f"{entry.robustbench!r}: check the id on robustbench.github.io",
            )
        with torch.device("meta"):
            module = zoo[entry.robustbench]["model"]()
        try:
            name, width = robustbench_architecture(module)
        except ValueError as exc:
            raise _entry_error(index, entry, str(exc)) from None
        arch = ArchSpec(name=name, width=width)
    from trainables.catalog import get_dataset_info

    eps = entry.eps
    if eps is None:
        size = get_dataset_info(source.dataset).size
        eps = standard_eps(source.dataset, str(norm), size)
    return entry.model_copy(
        update={
            "arch": arch,
            "source": DatasetSpec(dataset=source.dataset, classes=source.classes),
            "norm": norm or ROBUSTBENCH_THREATS[str(entry.threat_model)],
            "eps": eps,
        }
    )


def _import_robustbench(
    index: int, entry: NetworkSpec, module: str, what: str, or_else: str
) -> Any:
    """A module of the optional robustbench package, or one entry error that says whether the
    package is missing or installed but failing to import (robustbench 1.1.1 imports
    pkg_resources, which setuptools 80 and newer no longer ship), and how to install it."""
    fix = f"`{ROBUSTBENCH_INSTALL}`" + (f", {or_else}" if or_else else "")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name == "robustbench":
            problem = "needs the robustbench package, which is not installed"
        else:
            problem = (
                "needs the robustbench package, which is installed but does not import "
                f"({type(exc).__name__}: {exc})"
            )
        raise _entry_error(index, entry, f"{what} {problem}: {fix}") from None


def download_robustbench(index: int, entry: NetworkSpec, load: LoadRequest) -> None:
    """Fetch a RobustBench network into its cache layout with the package's own loader (which
    knows where each model is hosted); the package is needed for that."""
    utils = _import_robustbench(
        index,
        entry,
        "robustbench.utils",
        "downloading a RobustBench model",
        f"or fetch the file to {robustbench_path(entry, load)} yourself",
    )
    utils.load_model(
        entry.robustbench,
        model_dir=str(checkpoint_cache(load) / "models"),
        dataset=entry.dataset,
        threat_model=entry.threat_model,
    )


def resolve_networks(spec: SweepSpec, load: LoadRequest, *, check: bool) -> list[Network]:
    """Every network of the spec, found and checksummed (and, with check, loaded onto its arch).

    Raises SpecError (one line naming the entry) for a missing file, a URL not in the cache
    with download off, a sha256 mismatch, a file that is not safe to read, keys or a head that
    do not fit the arch, or a RobustBench id that cannot be resolved."""
    from trainables.checkpoint import sha256_file
    from trainables.checkpoint_import import CheckpointImportError
    from trainables.imported import check_network, fetch_checkpoint

    data = spec.data.to_config()
    out: list[Network] = []
    for index, given in enumerate(spec.networks or []):
        entry = resolve_robustbench(index, given) if given.robustbench else given
        location = entry.path or str(robustbench_path(entry, load))
        try:
            if entry.robustbench and not Path(location).is_file() and entry.download:
                download_robustbench(index, entry, load)
            if entry.robustbench and not Path(location).is_file():
                raise CheckpointImportError(
                    f"{location} is not there: fetch it on a machine with internet "
                    '(python -c "from robustbench.utils import load_model; load_model('
                    f"'{entry.robustbench}', model_dir='{checkpoint_cache(load) / 'models'}', "
                    f"dataset='{entry.dataset}', threat_model='{entry.threat_model}')\")"
                )
            local = fetch_checkpoint(
                location,
                download=entry.download,
                cache_dir=checkpoint_cache(load),
                sha256=entry.sha256,
            )
            # fetch_checkpoint has read the file for a sha256 the entry gives: not again.
            digest = entry.sha256.lower() if entry.sha256 else sha256_file(local)
            config = network_config(entry, digest, data)
            if check:
                check_network(config, local, "robustbench" if entry.robustbench else entry.format)
        except CheckpointImportError as exc:
            raise _entry_error(index, given, str(exc)) from None
        out.append(Network(index, entry, local, config))
    return out


def network_config(entry: NetworkSpec, sha256: str, data: Any) -> ImportedConfig:
    """The ImportedConfig of a resolved entry (arch, source, norm and eps all given)."""
    assert entry.arch is not None and entry.source is not None and entry.eps is not None
    return ImportedConfig(
        source=entry.source.to_ref(),
        arch=entry.arch.to_ref(),
        norm=str(entry.norm),
        eps=float(entry.eps),
        seed=entry.replicate,
        data=data,
        sha256=sha256,
        method=entry.method,
        mean=tuple(entry.mean) if entry.mean is not None else None,
        std=tuple(entry.std) if entry.std is not None else None,
        name=entry.label(),
    )
