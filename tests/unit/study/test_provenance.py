"""Provenance: the project's commit and dirty flag (git, or what `study submit` passed), the
software and the machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from study.provenance import COMMIT_ENV, DIRTY_ENV, as_tags, code_state, node_machine, runtime

pytestmark = pytest.mark.unit


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_the_commit_and_dirty_flag_come_from_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "a.py")
    git(repo, "commit", "-q", "-m", "one")
    head = git(repo, "rev-parse", "HEAD")
    assert code_state(repo) == {"git_commit": head, "git_dirty": "false"}
    (repo / "untracked.txt").write_text("not the code\n")  # untracked files do not count
    assert code_state(repo)["git_dirty"] == "false"
    (repo / "a.py").write_text("x = 2\n")
    assert code_state(repo) == {"git_commit": head, "git_dirty": "true"}
    # A folder without .git (an uploaded copy) says so rather than guessing.
    bare = tmp_path / "copy"
    bare.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert code_state(bare) == {"git_commit": "unknown", "git_dirty": "unknown"}


def test_what_study_submit_passed_wins_over_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(COMMIT_ENV, "0123abc")
    monkeypatch.setenv(DIRTY_ENV, "true")
    assert code_state(tmp_path) == {"git_commit": "0123abc", "git_dirty": "true"}


def test_the_runtime_names_the_software_and_the_machine() -> None:
    info = runtime()
    assert info["torch"] == torch.__version__
    assert info["cuda"] == (torch.version.cuda or "none")
    if not torch.cuda.is_available():
        assert info["gpu"] == "none" and info["cudnn"] == "none"
    assert info["host"] and info["python"]
    assert as_tags({"host": "h", "gpu": "none"}) == {"atsweep.host": "h", "atsweep.gpu": "none"}
    assert node_machine(None) == {}
