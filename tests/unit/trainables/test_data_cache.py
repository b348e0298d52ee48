"""The node cache of a URI data root (file:// URIs on tmp_path): each path copied once, under a
lock that concurrent processes wait on, never used half-copied, even by a copier's successor
after a SIGKILL. Processes synchronise through files they poll for, never through sleeps."""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trainables.data import cache
from trainables.data.cache import (
    cache_root_for,
    data_cache_dir,
    exclusive,
    is_complete,
    materialise,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
Spawn = Callable[..., subprocess.Popen]

# A worker process: signals readiness, waits for `start`, materialises; on_file signals the copy
# and waits for `go` (or for ever, with block=forever); a "waiting for" log line leaves a file.
WORKER = """
import json, logging, sys, threading, time
from pathlib import Path
from trainables.data.cache import materialise
uri, cache_dir, sync, me, block = sys.argv[1:6]
sync = Path(sync)
deadline = time.monotonic() + 120

def wait(name):
    while not (sync / name).exists():
        if time.monotonic() > deadline:
            sys.exit(f"{me}: no {name} within 120 s")
        time.sleep(0.01)

class Waiting(logging.Handler):
    def emit(self, record):
        if "waiting for" in record.getMessage():
            (sync / f"waiting-{me}").touch()

logger = logging.getLogger("trainables.data.cache")
logger.setLevel(logging.INFO)
logger.addHandler(Waiting())

def on_file(path):
    (sync / f"copying-{me}").write_text(path)
    if block == "forever":
        threading.Event().wait()
    wait("go")

(sync / f"ready-{me}").touch()
wait("start")
root, copied = materialise(uri, ["train", "labels.csv"], cache_dir=Path(cache_dir), on_file=on_file)
(sync / f"result-{me}.json").write_text(json.dumps({"root": str(root), "copied": copied}))
"""

# A process that takes `exclusive` after another holds it: records whether the holder had
# written `released` (just before letting go) by the time it got the lock.
EXCLUSIVE_WAITER = """
import json, logging, sys
from pathlib import Path
from trainables.data.cache import exclusive
name, cache_dir, sync = sys.argv[1:4]
sync = Path(sync)

class Waiting(logging.Handler):
    def emit(self, record):
        if "waiting for" in record.getMessage():
            (sync / "waiting").touch()

logger = logging.getLogger("trainables.data.cache")
logger.setLevel(logging.INFO)
logger.addHandler(Waiting())
with exclusive(name, Path(cache_dir)):
    (sync / "acquired.json").write_text(json.dumps({"released": (sync / "released").exists()}))
"""


def make_source(folder: Path) -> Path:
    """A data root: train/ (two class folders, an empty one, a 2.5 MiB file) and labels.csv."""
    rng = random.Random(0)
    files = {
        "train/cat/a.bin": rng.randbytes(1000),
        "train/cat/big.bin": rng.randbytes(5 << 19),
        "train/dog/b.bin": rng.randbytes(10),
        "train/dog/deeper/c.bin": b"",
        "labels.csv": b"name,label\na,0\nb,1\n",
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "train" / "empty").mkdir()
    (folder / "other").mkdir()  # not asked for: never copied
    (folder / "other" / "x.bin").write_bytes(b"x")
    return folder


def tree(path: Path) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under a folder, or a file's bytes under ''."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() if p.is_file() else None
        for p in sorted(path.rglob("*"))
    }


def leftovers(root: Path) -> list[Path]:
    """Temporaries of copies and of markers anywhere in a cache root."""
    return [p for p in root.rglob("*") if ".atsweep-tmp-" in p.name or ".tmp-" in p.name]


def wait_for(path: Path, *procs: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until a file exists; fail at once if one of procs exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a process exited ({proc.returncode}) before {path.name}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path} within {timeout} s")
        time.sleep(0.02)


def try_lock(lock_file: Path) -> bool:
    """Whether an exclusive flock on a file is free now (taken and released at once if so)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start `python -c script *args` in the repository (output to a log file); any still running
    at the end are killed by their PID."""
    started: list[subprocess.Popen] = []

    def start(script: str, *args: str) -> subprocess.Popen:
        log = (tmp_path / f"proc-{len(started)}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_cache_folder_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ATSWEEP_DATA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache_dir() == tmp_path / "xdg" / "atsweep" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_cache_dir() == Path.home() / ".cache" / "atsweep" / "data"
    monkeypatch.setenv("ATSWEEP_DATA_CACHE", str(tmp_path / "explicit"))
    assert data_cache_dir() == tmp_path / "explicit"
    digest = hashlib.sha256(b"s3://bucket/prefix").hexdigest()[:16]
    assert cache_root_for("s3://bucket/prefix/") == tmp_path / "explicit" / digest
    assert cache_root_for("s3://bucket/prefix", tmp_path / "c") == tmp_path / "c" / digest


def test_a_folder_and_a_file_are_copied_once_in_the_uri_layout(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    uri, cache_dir = f"file://{src}", tmp_path / "cache"
    seen: list[str] = []
    root, copied = materialise(
        uri, ["train/", "labels.csv"], cache_dir=cache_dir, on_file=seen.append
    )
    assert root == cache_root_for(uri, cache_dir) == cache_root_for(uri + "/", cache_dir)
    assert copied == ["train", "labels.csv"]
    copied_files = [
        "train/cat/a.bin",
        "train/cat/big.bin",
        "train/dog/b.bin",
        "train/dog/deeper/c.bin",
    ]
    assert sorted(seen) == sorted([*copied_files, "labels.csv"])
    assert tree(root / "train") == tree(src / "train")  # empty folders too
    assert (root / "train" / "empty").is_dir() and not (root / "other").exists()
    assert (root / "labels.csv").read_bytes() == (src / "labels.csv").read_bytes()
    marker = json.loads((root / ".complete" / "train").read_text())
    assert marker == {"uri": uri, "path": "train", "files": 4, "bytes": 1010 + (5 << 19)}
    assert is_complete(uri, "train", cache_dir) and is_complete(uri, "labels.csv", cache_dir)
    assert leftovers(root) == []

    again, copied = materialise(
        uri, ["train", "labels.csv"], cache_dir=cache_dir, on_file=seen.append
    )
    assert (again, copied) == (root, []) and len(seen) == 5
    assert tree(root / "train") == tree(src / "train")


def test_two_processes_filling_one_cache_copy_once(tmp_path: Path, spawn: Spawn) -> None:
    src = make_source(tmp_path / "src")
    uri, cache_dir, sync = f"file://{src}", tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    procs = [spawn(WORKER, uri, str(cache_dir), str(sync), me, "go") for me in ("0", "1")]
    for me in ("0", "1"):
        wait_for(sync / f"ready-{me}", *procs)
    (sync / "start").touch()
    # Whichever took the lock first copies, blocked in its on_file, until the other waits too.
    deadline = time.monotonic() + 120
    while not (copying := sorted(sync.glob("copying-*"))):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    copier = copying[0].name.removeprefix("copying-")
    other = "1" if copier == "0" else "0"
    wait_for(sync / f"waiting-{other}", *procs)
    (sync / "go").touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    results = {me: json.loads((sync / f"result-{me}.json").read_text()) for me in ("0", "1")}
    # The copier copied train while the other waited. labels.csv goes to whichever takes its
    # lock first once train is released: each path copied exactly once, by one of them.
    assert results[copier]["copied"][0] == "train"
    assert "train" not in results[other]["copied"]
    both = results[copier]["copied"] + results[other]["copied"]
    assert sorted(both) == ["labels.csv", "train"]
    root = Path(results[copier]["root"])
    assert Path(results[other]["root"]) == root == cache_root_for(uri, cache_dir)
    assert tree(root / "train") == tree(src / "train")
    assert (root / "labels.csv").read_bytes() == (src / "labels.csv").read_bytes()
    assert leftovers(root) == []


def test_a_copier_killed_mid_copy_leaves_nothing_in_use(tmp_path: Path, spawn: Spawn) -> None:
    src = make_source(tmp_path / "src")
    uri, cache_dir, sync = f"file://{src}", tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    (sync / "start").touch()
    proc = spawn(WORKER, uri, str(cache_dir), str(sync), "0", "forever")
    wait_for(sync / "copying-0", proc)
    proc.kill()
    assert proc.wait(timeout=60) == -9
    root = cache_root_for(uri, cache_dir)
    assert not (root / "train").exists() and not is_complete(uri, "train", cache_dir)
    assert list(root.glob(".train.atsweep-tmp-*"))  # the dead copier's half copy

    root, copied = materialise(uri, ["train", "labels.csv"], cache_dir=cache_dir)
    assert copied == ["train", "labels.csv"]
    assert tree(root / "train") == tree(src / "train")
    assert leftovers(root) == []


def test_a_path_without_its_marker_or_a_marker_without_its_path_is_copied_again(
    tmp_path: Path,
) -> None:
    src = make_source(tmp_path / "src")
    uri, cache_dir = f"file://{src}", tmp_path / "cache"
    root = cache_root_for(uri, cache_dir)
    # Killed after the rename, before the marker: a half folder (here, junk) with no marker.
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "a.bin").write_bytes(b"junk")
    (root / ".complete").mkdir()
    (root / ".complete" / "labels.csv").write_text("{}")  # its file deleted by hand
    paths = ["train", "labels.csv"]
    assert not any(is_complete(uri, path, cache_dir) for path in paths)
    assert materialise(uri, paths, cache_dir=cache_dir)[1] == paths
    assert tree(root / "train") == tree(src / "train")
    assert (root / "labels.csv").read_bytes() == (src / "labels.csv").read_bytes()


def test_a_missing_path_a_local_root_and_bad_paths_are_errors(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    uri, cache_dir = f"file://{src}", tmp_path / "cache"
    missing = re.escape(f"file://{src}/nope does not exist: put nope there or correct data.root")
    with pytest.raises(FileNotFoundError, match=missing):
        materialise(uri, ["labels.csv", "nope"], cache_dir=cache_dir)
    with pytest.raises(ValueError, match="needs no cache"):
        materialise(str(src), ["train"], cache_dir=cache_dir)
    for bad in ("", "/train", "../src", "train/../.."):
        with pytest.raises(ValueError, match="relative to the data root"):
            materialise(uri, [bad], cache_dir=cache_dir)
    with pytest.raises(ValueError, match="inside 'train'"):
        materialise(uri, ["train", "train/cat"], cache_dir=cache_dir)


def test_exclusive_makes_another_process_wait(tmp_path: Path, spawn: Spawn) -> None:
    cache_dir, sync = tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    name = "torchvision CIFAR10 /data"
    lock_file = cache_dir / "locks" / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock"
    with exclusive(name, cache_dir):
        assert not try_lock(lock_file)
        assert try_lock(cache_dir / "locks" / "another-name.lock")
        proc = spawn(EXCLUSIVE_WAITER, name, str(cache_dir), str(sync))
        wait_for(sync / "waiting", proc)  # it found the lock held and waits
        (sync / "released").touch()
    assert proc.wait(timeout=120) == 0
    assert json.loads((sync / "acquired.json").read_text()) == {"released": True}
    assert try_lock(lock_file)


def test_the_module_needs_neither_torch_nor_pyarrow() -> None:
    tree_ = ast.parse(Path(cache.__file__).read_text())
    names = {
        a.name.split(".")[0] for n in ast.walk(tree_) if isinstance(n, ast.Import) for a in n.names
    }
    names |= {
        n.module.split(".")[0]
        for n in ast.walk(tree_)
        if isinstance(n, ast.ImportFrom) and n.module
    }
    assert names <= set(sys.stdlib_module_names) | {"__future__", "trainables"}


def test_a_download_runs_under_the_node_lock_of_its_folder_and_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_dataset with download on holds exclusive(download:ROOT:NAME) while the loader (which
    lets torchvision download) runs: another process's download of the same dataset into the
    same folder waits. Probed from inside the loader with a non-blocking flock."""
    import numpy as np
    import torch

    from trainables.catalog import DatasetInfo
    from trainables.config import DataConfig, DatasetRef, LoadRequest
    from trainables.data import TensorImageSet, build_dataset, register_dataset

    monkeypatch.setenv("ATSWEEP_DATA_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "data")
    held: list[bool] = []

    def loader(request: LoadRequest) -> tuple[TensorImageSet, None]:
        lock = cache.data_cache_dir() / "locks"
        name = hashlib.sha256(f"download:{root}:test_locked".encode()).hexdigest()[:16]
        with open(lock / f"{name}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                held.append(True)
        images = torch.zeros(8, 1, 4, 4)
        return TensorImageSet(images, np.arange(8) % 2), None

    info = DatasetInfo("test_locked", 2, 1, 4, (0.5,), (0.25,), "a test set", files=False)
    register_dataset(info, loader, paths=())
    build_dataset(DatasetRef("test_locked"), DataConfig(), root=root, download=True)
    assert held == [True]
    build_dataset(DatasetRef("test_locked"), DataConfig(), root=root, download=False)
    assert held == [True, False]
