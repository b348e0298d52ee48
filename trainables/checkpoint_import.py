"""Import external robust checkpoints from local files onto our registered architectures.

Formats (`load_external_checkpoint(..., format=...)`):

* "robustness": MadryLab `robustness` library, `torch.save({'model': sd, 'epoch': ...})` of an
  AttackerModel wrapped in DataParallel: 'module.model.<net>' is the network,
  'module.attacker.model.<net>' and 'module.attacker.normalize.*' are the attacker's duplicates
  (ignored, reported), 'module.normalizer.new_mean' / 'new_std' (shape (3, 1, 1)) its input
  normaliser (it also clamps to [0, 1], a no-op for our [0, 1] inputs).
* "robustbench": a plain state dict of the network, possibly under 'state_dict' (or
  'model_state_dict') and 'module.'-prefixed; the normaliser, if any, is a 'mu'/'sigma' or
  'mean'/'std' buffer, or RobustBench's `normalize_model` wrapper ('normalize.mean', 'model.*').
  A network without one expects raw [0, 1] inputs, so our Normalize becomes the identity
  (unless mean/std are passed: some RobustBench models normalise with hard-coded constants).
* "torchvision": a torchvision model's own state dict ('conv1.weight', ..., 'fc.weight'), as
  torchvision.models and timm's torchvision ports save it. torchvision's code normalises nothing:
  its weights expect inputs normalised with the ImageNet constants of its transforms, which
  become our Normalize unless mean/std are passed.
* "state_dict": a torch.save'd state dict with our own key names, optionally 'module.'-prefixed.
* "safetensors": a .safetensors file with our own key names.
* "auto": safetensors by extension or header, otherwise from the keys: 'normalizer.' or
  'attacker.' keys mean robustness, 'body.*' + 'head.weight' mean state_dict, else robustbench.

Key mapping for the external formats, per (format, arch) in MAPPINGS: strip 'module.', take
the normaliser, drop ignored prefixes, strip the network prefix ('model.'), rename the final
linear layer (`linear` for robustness/RobustBench CIFAR ResNets, `fc` for torchvision and the
RobustBench WideResNet, `logits` also accepted for the latter, `logits` for the DeepMind
WideResNet) to 'head', and prefix everything else with 'body.' (our bodies use the libraries'
own module names, see trainables/models). A format whose reference keeps its normalisation in
code (RobustBench's DMWideResNet) must be given mean and std.
Loading is strict afterwards: any missing or unexpected key, or any shape mismatch, raises
CheckpointImportError naming the file, format, arch and keys. Only BatchNorm
'num_batches_tracked' counters, absent from checkpoints of old PyTorch versions, may be missing
(they keep the model's value and are reported as defaulted).

Files are read with torch.load(weights_only=True) or safetensors only, so a pickle that would
run code is refused instead of executed.
"""

from __future__ import annotations

import pickle
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from trainables.models import Classifier
from trainables.models.cifar import upgrade_legacy_resnet18_key

FORMATS = ("auto", "robustness", "robustbench", "torchvision", "state_dict", "safetensors")
OWN_FORMATS = ("state_dict", "safetensors")
SHOWN = 10  # how many missing / unexpected keys an error message lists


class CheckpointImportError(ValueError):
    """An external checkpoint that cannot be read safely or does not fit the model."""


@dataclass(frozen=True)
class KeyMapping:
    """How the keys of one external format and architecture become our Classifier's keys.

    Applied after stripping 'module.' from every key: the first (mean, std) pair of
    `normalizer` present sets our Normalize buffers; keys under an `ignore` prefix are dropped
    (reported); `network_prefix` is stripped from the rest; '<head>.weight' / '<head>.bias' for
    a name in `head` become 'head.weight' / 'head.bias'; every other key gets 'body.'.
    """

    network_prefix: str
    head: tuple[str, ...]
    ignore: tuple[str, ...] = ()
    normalizer: tuple[tuple[str, str], ...] = ()
    # The reference keeps its normalisation in code, not in its checkpoints: without an
    # override the import stops and names these constants instead of assuming raw inputs.
    normalization_in_code: str = ""
    # The normalisation the reference's users apply outside the network (torchvision's
    # transforms), used when the file holds none and the caller passes none.
    default_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None


_ROBUSTNESS_NORMALIZER = (("normalizer.new_mean", "normalizer.new_std"),)
_ROBUSTNESS_IGNORE = ("attacker.",)  # the attacker's copy of the network and of the normaliser
_ROBUSTBENCH_NORMALIZER = (("normalize.mean", "normalize.std"), ("mu", "sigma"), ("mean", "std"))

# robustness cifar_models/resnet.py: final layer `linear`.
ROBUSTNESS_CIFAR = KeyMapping("model.", ("linear",), _ROBUSTNESS_IGNORE, _ROBUSTNESS_NORMALIZER)
# robustness imagenet_models/resnet.py (torchvision's code and names): final layer `fc`.
ROBUSTNESS_IMAGENET = KeyMapping("model.", ("fc",), _ROBUSTNESS_IGNORE, _ROBUSTNESS_NORMALIZER)
# RobustBench ResNet / PreActResNet (Rice et al. 2020): final layer `linear`.
ROBUSTBENCH_RESNET = KeyMapping("model.", ("linear",), (), _ROBUSTBENCH_NORMALIZER)
# RobustBench / TRADES WideResNet: `fc` (or `logits`); some checkpoints (Carmon et al. 2019,
# sub_block1=True) hold an unused `sub_block1` that the forward pass never touches.
ROBUSTBENCH_WRN = KeyMapping("model.", ("fc", "logits"), ("sub_block1.",), _ROBUSTBENCH_NORMALIZER)
# RobustBench DMWideResNet (DeepMind, Swish): final layer `logits`; its mean and std are
# non-persistent buffers set from the dataset in RobustBench's code.
ROBUSTBENCH_DM = KeyMapping(
    "model.",
    ("logits",),
    (),
    _ROBUSTBENCH_NORMALIZER,
    normalization_in_code=(
        "RobustBench's CIFAR-10 models use mean (0.4914, 0.4822, 0.4465) and std "
        "(0.2471, 0.2435, 0.2616), its CIFAR-100 models mean (0.5071, 0.4865, 0.4409) and std "
        "(0.2673, 0.2564, 0.2762)"
    ),
)
# RobustBench ImageNet: a torchvision model, usually inside normalize_model ('model.' prefix).
ROBUSTBENCH_TORCHVISION = KeyMapping("model.", ("fc",), (), _ROBUSTBENCH_NORMALIZER)
# torchvision.models' own state dicts: no prefix, final layer `fc`, ImageNet normalisation
# applied by the transforms that come with the weights.
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TORCHVISION = KeyMapping("", ("fc",), default_normalization=IMAGENET_NORMALIZATION)

_TORCHVISION = ("tv_resnet18", "tv_resnet50", "tv_wide_resnet50_2")
MAPPINGS: dict[tuple[str, str], KeyMapping] = {
    ("robustness", "resnet18"): ROBUSTNESS_CIFAR,
    ("robustness", "resnet50"): ROBUSTNESS_CIFAR,
    **{("robustness", arch): ROBUSTNESS_IMAGENET for arch in _TORCHVISION},
    ("robustbench", "resnet18"): ROBUSTBENCH_RESNET,
    ("robustbench", "resnet50"): ROBUSTBENCH_RESNET,
    ("robustbench", "preact_resnet18"): ROBUSTBENCH_RESNET,
    ("robustbench", "wrn28_10"): ROBUSTBENCH_WRN,
    ("robustbench", "wrn34_10"): ROBUSTBENCH_WRN,
    ("robustbench", "wrn70_16"): ROBUSTBENCH_DM,
    **{("robustbench", arch): ROBUSTBENCH_TORCHVISION for arch in _TORCHVISION},
    **{("torchvision", arch): TORCHVISION for arch in _TORCHVISION},
}


@dataclass(frozen=True)
class ImportReport:
    """What load_external_checkpoint did.

    normalization: "checkpoint" (mean/std read from the file), "identity" (the external network
    has no normaliser, so ours is x -> x), "default" (the format's usual constants: torchvision's
    ImageNet mean and std) or "override" (mean/std passed by the caller).
    """

    path: str
    format: str
    arch: str | None
    tensors_loaded: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str
    ignored_keys: tuple[str, ...]
    defaulted_keys: tuple[str, ...]


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length and a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointImportError(
            f"could not read {path} as safetensors ({type(exc).__name__}: {exc}); the file is "
            "truncated, corrupted or not a safetensors file: check it (compare its size or "
            "checksum with the source) or pass the right format="
        ) from exc


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch.save's) makes torch warn of its protocol first; the
            # refusal below says what matters, in one line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" in text.lower() or "unsupported global" in text.lower():
            reason = next(
                (ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln),
                "a pickled global outside torch's weights-only allowlist",
            ).split(". Please use")[0]
            raise CheckpointImportError(
                f"refused to load {path}: it pickles Python objects other than tensors and "
                f"plain containers, which could run code when unpickled ({reason}); "
                "torch.load(weights_only=True) stopped before running any of it. Fix: export "
                "the network's state dict to a .safetensors file from a trusted source and "
                "import that"
            ) from None
        raise CheckpointImportError(
            f"could not read {path}: {exc}; the file is truncated or corrupted: fetch it again"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointImportError(
            f"could not read {path} with torch.load ({type(exc).__name__}: {exc}); the file is "
            "truncated, corrupted or not a PyTorch checkpoint: fetch it again or pass format="
        ) from exc


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a state dict, unwrapping {'model': ...} / {'state_dict': ...} containers.

    Returns (tensors, ignored non-tensor entries of the state dict itself).
    """

    def as_state_dict(candidate: Any) -> dict[str, torch.Tensor] | None:
        if not isinstance(candidate, Mapping) or not candidate:
            return None
        if any(isinstance(v, Mapping) for v in candidate.values()):
            return None
        tensors = {str(k): v for k, v in candidate.items() if torch.is_tensor(v)}
        return tensors or None

    direct = as_state_dict(obj)
    if direct is not None:
        return direct, [str(k) for k in obj if str(k) not in direct]
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict", "net"):
            inner = as_state_dict(obj.get(key))
            if inner is not None:
                return inner, [str(k) for k in obj[key] if str(k) not in inner]
        raise CheckpointImportError(
            f"{path} holds no state dict: top-level keys {sorted(map(str, obj))[:SHOWN]}; "
            "expected tensors, or a 'model' / 'state_dict' entry holding them"
        )
    raise CheckpointImportError(
        f"{path} holds a {type(obj).__name__}, not a state dict (a whole pickled model cannot "
        "be loaded safely): save model.state_dict() instead"
    )


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """robustness, state_dict or robustbench from the keys of a torch.load'ed state dict."""
    keys = set(_strip_module(state))
    if any(k.startswith(("normalizer.", "attacker.")) for k in keys):
        return "robustness"
    if "head.weight" in keys and any(k.startswith("body.") for k in keys):
        return "state_dict"
    return "robustbench"


def _take_normalizer(
    state: dict[str, torch.Tensor], candidates: tuple[tuple[str, str], ...]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    for mean_key, std_key in candidates:
        if mean_key in state and std_key in state:
            mean, std = state.pop(mean_key), state.pop(std_key)
            return mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
    return None


def _map_external(
    state: dict[str, torch.Tensor], mapping: KeyMapping
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None, list[str]]:
    """(our keys -> tensors, the checkpoint's (mean, std) if any, ignored original keys)."""
    state = dict(state)
    norm = _take_normalizer(state, mapping.normalizer)
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    heads = {f"{h}.{p}": f"head.{p}" for h in mapping.head for p in ("weight", "bias")}
    for key, value in state.items():
        if key.startswith(mapping.ignore):
            ignored.append(key)
            continue
        net_key = key.removeprefix(mapping.network_prefix)
        mapped[heads.get(net_key, f"body.{net_key}")] = value
    return mapped, norm, ignored


def _map_own(state: dict[str, torch.Tensor], arch: str | None) -> dict[str, torch.Tensor]:
    """Our own key names; resnet18 keys of the pre-rename Sequential body are upgraded."""
    if arch != "resnet18":
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("body."):
            key = "body." + upgrade_legacy_resnet18_key(key.removeprefix("body."))
        out[key] = value
    return out


def _listing(label: str, keys: Sequence[str]) -> str:
    more = f" (first {SHOWN} of {len(keys)})" if len(keys) > SHOWN else ""
    return f"\n  {label}{more}: {', '.join(keys[:SHOWN])}"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _read_state(path: Path, format: str) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(tensors with 'module.' stripped, the format they are in, ignored non-tensor entries).

    A safetensors file is read as such whatever the format (an external library's keys may be
    exported to one); its format is detected from its keys under auto."""
    ignored: list[str] = []
    if format == "safetensors" or _looks_like_safetensors(path):
        raw = _read_safetensors(path)
        if format == "auto":
            detected = detect_format(raw)
            format = "safetensors" if detected == "state_dict" else detected
    else:
        raw, ignored = _find_state_dict(_read_torch(path), path)
        format = detect_format(raw) if format == "auto" else format
    return _strip_module(raw), format, ignored


def _map_state(
    path: Path, state: dict[str, torch.Tensor], fmt: str, arch: str | None, override: bool
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None, list[str], str]:
    """Our keys -> tensors, the file's (mean, std) if any, ignored keys, and where the
    normalisation comes from when neither the file nor the caller gives it ("" if from them)."""
    if fmt in OWN_FORMATS:
        mapped = _map_own(state, arch)
        norm = None
        if "normalize.mean" in mapped and "normalize.std" in mapped:
            norm = mapped["normalize.mean"], mapped["normalize.std"]
        return mapped, norm, [], "missing"
    mapping = MAPPINGS.get((fmt, arch or ""))
    if mapping is None:
        supported = sorted(a for f, a in MAPPINGS if f == fmt)
        raise CheckpointImportError(
            f"{path}: no key mapping for format {fmt!r} onto arch {arch!r}; mappings exist "
            f"for {', '.join(supported)}: build the model with one of them, or pass "
            f"format= ({', '.join(FORMATS)})"
        )
    mapped, norm, ignored = _map_external(state, mapping)
    if norm is None and not override and mapping.normalization_in_code:
        raise CheckpointImportError(
            f"{path}: a {fmt} checkpoint of {arch} holds no normalisation (its code sets "
            f"it): pass mean= and std= (in a study, the entry's mean and std); "
            f"{mapping.normalization_in_code}"
        )
    # An external network without a normaliser was trained on raw [0, 1] inputs, unless its
    # library's users normalise outside it (torchvision's transforms).
    return mapped, norm, ignored, "default" if mapping.default_normalization else "identity"


def _check_fit(
    path: Path, fmt: str, arch: str | None, mapped: dict[str, torch.Tensor], model: Classifier
) -> list[str]:
    """Raise unless the mapped tensors fit the model key for key and shape for shape; returns
    the num_batches_tracked counters the file lacks (defaulted to the model's)."""
    expected = model.state_dict()
    defaulted = [k for k in expected if k not in mapped and k.endswith("num_batches_tracked")]
    missing = [k for k in expected if k not in mapped and k not in defaulted]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        msg = (
            f"{path}: checkpoint (format {fmt!r}) does not match arch {arch!r} after key "
            f"mapping: {len(missing)} missing and {len(unexpected)} unexpected keys"
        )
        if missing:
            msg += _listing("missing", missing)
        if unexpected:
            msg += _listing("unexpected", unexpected)
        msg += (
            "\nFix: build the model with the checkpoint's arch (and width), or pass the right "
            f"format= (one of {', '.join(FORMATS)})"
        )
        raise CheckpointImportError(msg)
    head = mapped.get("head.weight")
    if head is not None and head.shape[0] != expected["head.weight"].shape[0]:
        raise CheckpointImportError(
            f"{path}: the checkpoint's head has {head.shape[0]} classes but the model's source "
            f"has {expected['head.weight'].shape[0]}: give the source dataset (and class "
            "subset) the network was trained on"
        )
    mismatched = [
        f"{k}: checkpoint {_shape(v)} vs model {_shape(expected[k])}"
        for k, v in mapped.items()
        if _shape(v) != _shape(expected[k])
    ]
    if mismatched:
        raise CheckpointImportError(
            f"{path}: checkpoint (format {fmt!r}) has {len(mismatched)} tensors whose shape "
            f"differs from arch {arch!r}:\n  "
            + "\n  ".join(mismatched[:SHOWN])
            + "\nFix: build the model with the checkpoint's width, number of classes and input "
            "channels"
        )
    return defaulted


def load_external_checkpoint(
    path: str | Path,
    model: Classifier,
    *,
    format: str = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImportReport:
    """Load a local external checkpoint into `model` in place (strictly) and report what was done:
    read the file, map its keys, set the normalisation, check the fit, load.

    `mean`/`std` override the normalisation, for networks that normalise with constants in
    their code rather than buffers in the checkpoint; otherwise the checkpoint's normaliser is
    used, or the format's usual constants (torchvision), or the identity for an external network
    that has none.
    """
    path = Path(path)
    if format not in FORMATS:
        raise CheckpointImportError(f"unknown format {format!r}: choose one of {FORMATS}")
    if (mean is None) != (std is None):
        raise CheckpointImportError("pass both mean and std to override normalisation, or neither")
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointImportError(
            f"{path} {what}: pass the checkpoint file (our own checkpoint directories load "
            "with trainables.checkpoint.load_checkpoint)"
        )
    arch = model.arch
    state, fmt, ignored = _read_state(path, format)
    mapped, norm, dropped, fallback = _map_state(path, state, fmt, arch, mean is not None)
    ignored += dropped

    expected = model.state_dict()
    from_file = set(mapped)  # our keys whose tensors come from the file
    if mean is not None and std is not None:
        normalization = "override"
        norm = (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
        from_file -= {"normalize.mean", "normalize.std"}
    elif norm is not None:
        normalization = "checkpoint"
        from_file |= {"normalize.mean", "normalize.std"}
    elif fallback == "default":
        normalization = "default"
        constants = MAPPINGS[(fmt, arch or "")].default_normalization
        assert constants is not None
        norm = tuple(torch.tensor(c).view(1, -1, 1, 1) for c in constants)  # type: ignore[assignment]
    elif fallback == "identity":
        normalization = "identity"
        norm = (
            torch.zeros_like(expected["normalize.mean"]),
            torch.ones_like(expected["normalize.std"]),
        )
    else:  # our own formats always hold normalize.*: leave them missing, so strictness reports
        normalization = "missing"
    if norm is not None:
        mapped["normalize.mean"], mapped["normalize.std"] = norm

    defaulted = _check_fit(path, fmt, arch, mapped, model)
    for key in defaulted:
        mapped[key] = expected[key]
    model.load_state_dict(mapped, strict=True)
    return ImportReport(
        path=str(path),
        format=fmt,
        arch=arch,
        tensors_loaded=len(from_file),
        mean=tuple(float(v) for v in model.normalize.mean.flatten()),
        std=tuple(float(v) for v in model.normalize.std.flatten()),
        normalization=normalization,
        ignored_keys=tuple(ignored),
        defaulted_keys=tuple(defaulted),
    )
