"""Results and checkpoints at a local path or a URI (s3://, gs://, any fsspec protocol).

A location is a string: a local path, or a URI that pyarrow's filesystems understand (s3://
bucket/key, gs://, hdfs://, file://) or, failing that, one that fsspec does (memory://, az:// with
adlfs, ...), wrapped as a pyarrow filesystem. Workers never write a study's results themselves:
they read checkpoints (downloaded to a local folder first) and Tune writes checkpoints to its
storage_path; the driver writes tables and artifacts through these helpers.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | Path) -> bool:
    """Whether a location is a URI (scheme://...) rather than a local path."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


def is_remote(location: str | Path) -> bool:
    """Whether a location is on a filesystem other than this machine's disk."""
    return is_uri(location) and not str(location).startswith("file://")


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding a location and the path inside it."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    location = str(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, TypeError) as exc:
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(location)
        except (ImportError, ValueError) as fsspec_exc:
            raise ValueError(
                f"{location!r}: no filesystem for this URI ({exc}; fsspec: {fsspec_exc}): use a "
                "local path, s3://, gs://, or install the fsspec package for the protocol"
            ) from fsspec_exc
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def to_location(fs: pafs.FileSystem, path: str) -> str:
    """The inverse of resolve: a local path, or a URI carrying the filesystem's scheme."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    if isinstance(fs, pafs.PyFileSystem):
        inner = fs.handler.fs
        return str(inner.unstrip_protocol(path))
    scheme = {"gcs": "gs"}.get(fs.type_name, fs.type_name)
    return f"{scheme}://{path.lstrip('/')}"


def join(location: str | Path, *parts: str) -> str:
    """location/part/...: a path joined as a path, a URI joined with '/'."""
    if not is_uri(location):
        return str(Path(location, *parts))
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])


def exists(location: str | Path) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str | Path) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_dir(location: str | Path) -> list[tuple[str, bool]]:
    """(name, is_directory) of each entry directly under a folder; [] when there is none."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted((info.base_name, info.type == pafs.FileType.Directory) for info in infos)


def read_bytes(location: str | Path) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as fh:
        return bytes(fh.read())


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write a whole file (on object stores the object appears only once it is complete)."""
    fs, path = resolve(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def remove(location: str | Path) -> None:
    """Delete a file; one that is already gone is no error."""
    fs, path = resolve(location)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def upload_file(local: Path, location: str | Path) -> None:
    """Copy a local file to a location."""
    if not is_remote(location):
        target = Path(resolve(location)[1])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        return
    write_bytes(location, Path(local).read_bytes())


def local_copy(location: str | Path, scratch: Path | None = None) -> Path:
    """A local folder or file with the content of a location: the location itself when it is on
    this machine, else a download into scratch (a new temporary folder by default)."""
    if not is_remote(location):
        return Path(resolve(location)[1])
    fs, path = resolve(location)
    scratch = Path(scratch or tempfile.mkdtemp(prefix="atsweep-"))
    target = scratch / path.rstrip("/").rsplit("/", 1)[-1]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{location} does not exist")
    if info.type == pafs.FileType.File:
        target.write_bytes(read_bytes(location))
        return target
    target.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(target), source_filesystem=fs)
    return target
