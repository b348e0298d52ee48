"""What a training trial receives from the driver: one typed payload, carried in Tune's config.

The driver builds a TrialPayload per grid cell (or one for every trial of a search, with the
arch choices and the transfer objectives), Tune carries its canonical JSON form in
config["payload"], and the trial, the driver's trial names and its callback parse it back with
`TrialPayload.from_tune`. A search's sampled values (eps, lr, ...) sit beside it in the config,
where Tune's search algorithm puts them; `train_config` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from trainables.config import (
    ArchRef,
    DatasetRef,
    LoadRequest,
    ProbeConfig,
    RunOptions,
    TrainConfig,
    from_canonical,
    to_canonical,
)

PAYLOAD_KEY = "payload"
SEARCH_PARAMS = ("eps", "lr", "weight_decay", "arch", "norm")


@dataclass(frozen=True)
class TransferObjective:
    """A search objective computed inside the trial at its last epoch: the probe on a target."""

    target: DatasetRef
    probe: ProbeConfig

    @property
    def metric(self) -> str:
        return f"objective/transfer/{self.target.id}"


@dataclass(frozen=True)
class TrialPayload:
    """Everything a trial needs: its config (a search's base config before the sampled values),
    where data is, how it runs, and the earlier attempts whose checkpoints it may resume from.

    search: the trial's config comes from a sampler (archs are its arch choices, objectives the
    transfer metrics it reports at the end); otherwise `config` is the grid cell itself.
    """

    config: TrainConfig
    load: LoadRequest = field(default_factory=LoadRequest)
    run_options: RunOptions = field(default_factory=RunOptions)
    resume_dirs: tuple[str, ...] = ()
    search: bool = False
    archs: tuple[ArchRef, ...] = ()
    objectives: tuple[TransferObjective, ...] = ()

    def to_tune(self) -> dict[str, Any]:
        """The JSON form that Tune's config carries (and pickles into its experiment state)."""
        out: dict[str, Any] = to_canonical(asdict(self))
        return out

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> TrialPayload:
        """The payload of a Tune trial's config."""
        payload: TrialPayload = from_canonical(cls, config[PAYLOAD_KEY])
        return payload

    def train_config(self, config: Mapping[str, Any]) -> TrainConfig:
        """The trial's TrainConfig: the grid cell, or the base config with the values the
        search's sampler put in config."""
        if not self.search:
            return self.config
        params = {k: config[k] for k in SEARCH_PARAMS if k in config}
        return apply_search_params(self.config, params, {a.id: a for a in self.archs})


def apply_search_params(
    base: TrainConfig, params: Mapping[str, Any], archs: Mapping[str, ArchRef]
) -> TrainConfig:
    """A search trial's config: base with the sampler's values (eps, lr, weight_decay, norm, and
    arch by its id in archs) put in."""
    cfg = base
    if "eps" in params:
        cfg = replace(cfg, eps=float(params["eps"]))
    if "norm" in params:
        cfg = replace(cfg, norm=str(params["norm"]))
    if "arch" in params:
        cfg = replace(cfg, arch=archs[str(params["arch"])])
    if "lr" in params or "weight_decay" in params:
        lr = float(params["lr"]) if "lr" in params else cfg.optim.lr
        weight_decay = (
            float(params["weight_decay"]) if "weight_decay" in params else cfg.optim.weight_decay
        )
        cfg = replace(cfg, optim=replace(cfg.optim, lr=lr, weight_decay=weight_decay))
    return cfg


def trial_config(config: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of a Tune trial's config."""
    return TrialPayload.from_tune(config).train_config(config)
