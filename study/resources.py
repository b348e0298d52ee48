"""Whether a study's resource requests fit the nodes of a cluster, checked before anything runs.

A trial asking for 2 GPUs on a cluster whose largest node has 1 would wait in Tune's queue
forever; this turns it into a spec error naming the field, the value and the node types there
are. Node types come from a cluster.yaml (`available_node_types`, with explicit `resources`), or
from a running Ray cluster: the nodes alive now plus, on a cluster started by `ray up`, the node
types its autoscaler may still launch (its bootstrap config on the head node).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from study.spec import ResourcesSpec, SpecError

# Where `ray up` leaves the cluster's config (resources filled in) on the head node.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


@dataclass(frozen=True)
class NodeType:
    """What one node of a kind offers; None where the config does not say."""

    name: str
    cpus: float | None
    gpus: float | None

    def describe(self) -> str:
        cpus = "? CPUs" if self.cpus is None else f"{self.cpus:g} CPUs"
        gpus = "? GPUs" if self.gpus is None else f"{self.gpus:g} GPUs"
        return f"{self.name} ({cpus}, {gpus})"


def node_types_from_config(config: dict[str, Any]) -> list[NodeType]:
    """The node types of a Ray cluster config (`available_node_types`).

    A resource a type does not declare is detected by the cloud provider at `ray up`: here it
    is unknown, and an unknown amount never rejects a request.
    """
    types = config.get("available_node_types") or {}
    out = []
    for name, node in types.items():
        resources = (node or {}).get("resources") or {}
        cpus, gpus = resources.get("CPU"), resources.get("GPU")
        out.append(
            NodeType(
                str(name),
                None if cpus is None else float(cpus),
                None if gpus is None else float(gpus),
            )
        )
    return out


def node_types_from_yaml(path: str | Path) -> list[NodeType]:
    """The node types of a cluster.yaml; a missing or unreadable file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            f"cluster config {str(path)!r} not found: pass the cluster.yaml you ran `ray up` on"
        )
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: fix it (ray up would reject it too)") from exc
    types = node_types_from_config(config)
    if not types:
        raise SpecError(f"{path}: no available_node_types: is this a Ray cluster config?")
    return types


def node_type_of_this_machine() -> NodeType:
    """What a local Ray started here offers: this machine's CPUs and CUDA GPUs."""
    import os

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return NodeType("this machine", float(os.cpu_count() or 1), float(gpus))


def node_types_from_ray() -> list[NodeType]:
    """The node types of the Ray cluster this process is connected to (ray.init done)."""
    import ray

    types = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        name = f"node {node.get('NodeManagerAddress', '?')}"
        types.append(NodeType(name, float(res.get("CPU", 0)), float(res.get("GPU", 0))))
    bootstrap = BOOTSTRAP_CONFIG.expanduser()
    if bootstrap.is_file():
        try:
            config = yaml.safe_load(bootstrap.read_text()) or {}
        except yaml.YAMLError:
            config = {}
        types += node_types_from_config(config)
    return types


def _fits(cpus: float, gpus: float, node: NodeType) -> bool:
    return (node.cpus is None or cpus <= node.cpus) and (node.gpus is None or gpus <= node.gpus)


def check_resources(resources: ResourcesSpec, node_types: list[NodeType], where: str) -> None:
    """Raise SpecError when a trial's or an evaluation's request fits no node type."""
    if not node_types:
        return
    listing = "; ".join(n.describe() for n in node_types)
    for what, (cpus, gpus) in resources.requests().items():
        if any(_fits(cpus, gpus, n) for n in node_types):
            continue
        max_gpus = max((n.gpus for n in node_types if n.gpus is not None), default=None)
        max_cpus = max((n.cpus for n in node_types if n.cpus is not None), default=None)
        if max_gpus is not None and gpus > max_gpus:
            field, value, unit = f"gpus_per_{what}", gpus, "GPUs"
        elif max_cpus is not None and cpus > max_cpus:
            field, value, unit = f"cpus_per_{what}", cpus, "CPUs"
        else:
            raise SpecError(
                f"resources.cpus_per_{what} = {cpus:g} with gpus_per_{what} = {gpus:g}: no node "
                f"type of {where} has both ({listing}): lower one, or add a node type that fits"
            )
        raise SpecError(
            f"resources.{field} = {value:g}: larger than any node of {where} ({listing}): "
            f"ask for at most the {unit} of one node, or add a node type with {value:g} {unit}"
        )
