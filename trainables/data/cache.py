"""Datasets whose data root is a URI, copied once onto each node's disk.

A sweep's data.root may be a URI that trainables.storage reads (s3://bucket/prefix, gs://...,
file:///nfs/path, an fsspec protocol). `materialise` copies the folders or files a trial or an
evaluation needs under it into this node's cache: one folder per URI (cache_root_for, under
data_cache_dir()) in which each path keeps its place under the URI. Each path is copied once per
node, by whichever of the node's worker processes asks first:

- it is copied under an exclusive flock on CACHE/locks/<sha16>.lock, one lock per URI and path
  (lock files stay; deleting one a process waits on would let two copiers in), so the node's
  other processes wait, then find it complete and copy nothing;
- the copy goes to a temporary sibling (`.<name>.atsweep-tmp-<pid>`), is renamed into place with
  os.replace and only then marked complete by a marker ROOT/.complete/<the path, percent-quoted>
  (a small JSON: uri, path, files, bytes). A path counts as complete when both the path and its
  marker exist; a complete path is never removed. A copier killed mid-copy releases its lock by
  dying and leaves a temporary, or a path without a marker, that nobody uses: the next lock holder
  removes both and copies again.

This is safe against killed processes, not against a machine that loses power (files are not
fsynced; delete the cache folder after such a crash). The cache is this module's: a path put into
it by hand without its marker is removed and copied again. Paths must not nest (a folder and a
file inside it), since each is copied, and replaced, as a whole. Locks are fcntl.flock (Unix).
It uses only the standard library and trainables.storage (pyarrow's filesystems are reached
through it alone, tests/unit/test_layering.py). trainables.data.build_dataset calls it through
local_request before a dataset is loaded, and check_available looks for the paths under the URI.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import posixpath
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from trainables import storage

log = logging.getLogger(__name__)

COMPLETE_DIR = ".complete"
"""The folder, in a URI's cache root, of the markers of its complete paths."""

_TMP_TAG = ".atsweep-tmp-"
_CHUNK = 1 << 20


def data_cache_dir() -> Path:
    """$ATSWEEP_DATA_CACHE, else $XDG_CACHE_HOME/atsweep/data (default ~/.cache/atsweep/data)."""
    explicit = os.environ.get("ATSWEEP_DATA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "atsweep" / "data"


def _sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else data_cache_dir()


def cache_root_for(uri: str, cache_dir: Path | None = None) -> Path:
    """The local folder that mirrors `uri` on this node: cache_dir / <first 16 hex of the sha256
    of the URI with trailing / stripped>. Paths under the URI keep their relative layout under it.
    """
    return _cache(cache_dir) / _sha16(uri.rstrip("/"))


def _relative(path: str) -> str:
    """A path under the URI in one spelling (a/b, no trailing /), or ValueError."""
    text = str(path).strip()
    rel = posixpath.normpath(text.rstrip("/")) if text else ""
    if not text or text.startswith("/") or rel in (".", "..") or rel.startswith("../"):
        raise ValueError(
            f"{path!r}: a path to cache must be a folder or file relative to the data root "
            "(like 'train' or 'labels.csv'), not empty, absolute or outside the root"
        )
    if rel.split("/", 1)[0] == COMPLETE_DIR:
        raise ValueError(f"{path!r}: {COMPLETE_DIR}/ holds the cache's markers")
    return rel


def _marker(root: Path, rel: str) -> Path:
    name = urllib.parse.quote(rel, safe="")
    if len(name) > 200:  # within a file name's 255 bytes
        name = f"{name[:180]}-{_sha16(rel)}"
    return root / COMPLETE_DIR / name


def _complete(root: Path, rel: str) -> bool:
    return (root / rel).exists() and _marker(root, rel).is_file()


def is_complete(uri: str, path: str, cache_dir: Path | None = None) -> bool:
    """Whether a path under the URI is in this node's cache, complete (it and its marker exist)."""
    return _complete(cache_root_for(uri, cache_dir), _relative(path))


@contextlib.contextmanager
def _flock(lock_file: Path, what: str) -> Iterator[None]:
    """An exclusive flock on lock_file for the block (logging a line when it has to wait)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            log.info("waiting for %s: process %s holds %s", what, holder, lock_file)
            fcntl.flock(fd, fcntl.LOCK_EX)
        # The holder's pid, for the line above in the processes that wait.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def exclusive(
    lock_name: str, cache_dir: Path | None = None
) -> contextlib.AbstractContextManager[None]:
    """An exclusive fcntl.flock on cache_dir/locks/<sha16 of lock_name>.lock for the block, for
    other writers that share a folder on one node (a torchvision download=True load). Blocks
    until no other process or thread holds it; not reentrant (a second `with` on the same name
    inside the first waits forever)."""
    return _flock(_cache(cache_dir) / "locks" / f"{_sha16(lock_name)}.lock", lock_name)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree; one that is already gone is no error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clear_stale(final: Path, marker: Path) -> None:
    """Under the path's lock: remove what killed copiers left (their temporaries, a path without
    its marker, a marker without its path): no live process uses any of it."""
    copies = final.parent.glob(f".{glob.escape(final.name)}{_TMP_TAG}*")
    markers = marker.parent.glob(f".{glob.escape(marker.name)}.tmp-*")
    for tmp in [*copies, *markers]:
        log.info("removing %s, left by a copy that was cut short", tmp)
        _remove(tmp)
    marker.unlink(missing_ok=True)  # the path is not complete: its marker (if any) goes first
    if final.exists() or final.is_symlink():
        log.warning("removing %s, left without its completion marker (a copy cut short)", final)
        _remove(final)


def _walk(location: str) -> tuple[list[str], list[str]]:
    """The folders and the files under a folder location, as paths relative to it."""
    folders: list[str] = []
    files: list[str] = []
    pending = [""]
    while pending:
        sub = pending.pop()
        for name, is_dir in storage.list_dir(storage.join(location, sub) if sub else location):
            child = f"{sub}/{name}" if sub else name
            if is_dir:
                folders.append(child)
                pending.append(child)
            else:
                files.append(child)
    return sorted(folders), sorted(files)


def _copy_file(fs: Any, source: str, target: Path) -> int:
    """Stream one file of a pyarrow filesystem to a local file in 1 MiB chunks: its size."""
    size = 0
    with fs.open_input_stream(source) as src, target.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            size += len(chunk)
    return size


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _copy(uri: str, rel: str, root: Path, on_file: Callable[[str], None] | None) -> None:
    """Copy one path under the URI to root/rel, under its lock: temporary, rename, marker."""
    location = storage.join(uri, rel)
    if not storage.exists(location):
        raise FileNotFoundError(
            f"{location} does not exist: put {rel} there or correct data.root (now {uri})"
        )
    final = root / rel
    marker = _marker(root, rel)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final, marker)
    tmp = final.with_name(f".{final.name}{_TMP_TAG}{os.getpid()}")
    fs, source = storage.resolve(location)
    start = time.monotonic()
    size = files = 0
    try:
        if storage.is_dir(location):
            folders, names = _walk(location)
            tmp.mkdir()
            for folder in folders:
                (tmp / folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                size += _copy_file(fs, f"{source.rstrip('/')}/{name}", tmp / name)
                files += 1
                if on_file is not None:
                    on_file(f"{rel}/{name}")
        else:
            size += _copy_file(fs, source, tmp)
            files += 1
            if on_file is not None:
                on_file(rel)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    # The marker last, itself written whole (a temporary renamed): now the path is complete.
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
    record = {"uri": uri, "path": rel, "files": files, "bytes": size}
    partial.write_text(json.dumps(record) + "\n")
    os.replace(partial, marker)
    seconds = time.monotonic() - start
    log.info(
        "copied %s into %s: %d files, %s in %.1f s", location, final, files, _size(size), seconds
    )


def materialise(
    uri: str,
    paths: Sequence[str],
    *,
    cache_dir: Path | None = None,
    on_file: Callable[[str], None] | None = None,
) -> tuple[Path, list[str]]:
    """Copy each path (a folder or a file, relative to the URI) into cache_root_for(uri) once.

    Returns that local root, in which each path has its place under the URI, and the paths this
    call copied (normalised: a/b, no trailing /), [] when all were complete already. Each path is
    copied under its lock, to a temporary renamed into place, then marked complete (the module's
    docstring); a path already complete is neither locked nor copied. on_file(path) is called
    after each file is copied, with the file's path relative to the URI.

    A plain local path (no scheme) raises ValueError: it needs no cache. A path missing under the
    URI raises FileNotFoundError naming its full URI; one that is absolute, leaves the URI or
    nests inside another of `paths` raises ValueError.
    """
    if not storage.is_uri(uri):
        raise ValueError(
            f"{uri!r} is a local path: it needs no cache, read the data where it is (the node "
            "cache is for a data root that is a URI: s3://, gs://, file://...)"
        )
    rels = list(dict.fromkeys(_relative(p) for p in ([paths] if isinstance(paths, str) else paths)))
    chosen = set(rels)
    for rel in rels:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in chosen:
                raise ValueError(
                    f"{rel!r} is inside {'/'.join(parts[:depth])!r}, also to be cached: "
                    "give the folder alone"
                )
    cache = _cache(cache_dir)
    root = cache_root_for(uri, cache)
    copied: list[str] = []
    for rel in rels:
        if _complete(root, rel):
            continue
        key = "materialise " + uri.rstrip("/") + " " + rel
        lock = cache / "locks" / f"{_sha16(key)}.lock"
        with _flock(lock, storage.join(uri, rel)):
            if _complete(root, rel):  # another process copied it while this one waited
                continue
            _copy(uri, rel, root, on_file)
            copied.append(rel)
    return root, copied
