"""Where a study's results came from: the project's commit, the software and the machines.

Recorded on the study's MLflow run, on each trial's run and in study.json. The commit is the
git HEAD of the folder this package is installed from, with a dirty flag (uncommitted changes
to tracked files); `study submit` reads it before uploading the folder (the upload has no .git)
and passes it to the job in ATSWEEP_GIT_COMMIT and ATSWEEP_GIT_DIRTY, which win over git here.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

COMMIT_ENV = "ATSWEEP_GIT_COMMIT"
DIRTY_ENV = "ATSWEEP_GIT_DIRTY"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
TAG_PREFIX = "atsweep."


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def code_state(folder: Path = PROJECT_ROOT) -> dict[str, str]:
    """{git_commit, git_dirty}: from the environment a submitted job was given, else from git
    in the project's folder; 'unknown' where neither says (a copy without .git, no git)."""
    if os.environ.get(COMMIT_ENV):
        return {"git_commit": os.environ[COMMIT_ENV], "git_dirty": os.environ.get(DIRTY_ENV, "")}
    head = _git(folder, "rev-parse", "HEAD")
    if head is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if status is None else str(bool(status.strip())).lower()
    return {"git_commit": head.strip(), "git_dirty": dirty}


def runtime() -> dict[str, str]:
    """This machine: host, Python, torch and its CUDA and cuDNN, the GPU model ('none')."""
    import torch

    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if cuda else None
    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cudnn": str(cudnn) if cudnn else "none",
        "gpu": torch.cuda.get_device_name(0) if cuda else "none",
    }


def provenance() -> dict[str, str]:
    """code_state() and runtime() together: what study.json and the study's run record."""
    return {**code_state(), **runtime()}


def as_tags(values: dict[str, Any]) -> dict[str, str]:
    """MLflow tags: atsweep.KEY = value."""
    return {f"{TAG_PREFIX}{k}": str(v) for k, v in values.items()}


def node_machine(node_id: str | None) -> dict[str, str]:
    """The host and GPU model of a Ray node (from the driver's view of the cluster); {} when
    Ray is not running here or does not know the node."""
    import sys

    ray = sys.modules.get("ray")
    if not node_id or ray is None or not ray.is_initialized():
        return {}
    for node in ray.nodes():
        if node.get("NodeID") != node_id:
            continue
        kinds = [
            k.split(":", 1)[1]
            for k in node.get("Resources", {})
            if k.startswith("accelerator_type:")
        ]
        return {
            "host": str(node.get("NodeManagerHostname", "")),
            "gpu": ", ".join(kinds)
            if kinds
            else ("none" if not node.get("Resources", {}).get("GPU") else "unknown"),
        }
    return {}
