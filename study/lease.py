"""The study lease: one driver at a time writes a study's results root.

A lease is a series of small JSON records, RESULTS/lease/gen-000001.json, gen-000002.json, ...:
the newest generation is the lease. Its record names the holder (host, pid, Ray job, when it
started) and carries a heartbeat that the holder renews from a background thread every quarter
of the timeout. Records are created with an atomic create-if-absent (a hard link of a complete
temporary file on a local disk; a conditional PUT with `If-None-Match: *` on S3), so of two
drivers that start together exactly one creates the next generation; the other reads it and
refuses (LeaseHeldError: one line naming the holder and since when). A holder whose heartbeat is
older than the timeout (a driver killed with SIGKILL, a lost head node) is taken over with a
warning: the new driver creates the next generation, which again only one can do; a holder on
this machine (the same boot and PID namespace) whose process is gone is taken over at once. The
old holder, if it was only slow or frozen, finds the newer generation at its next heartbeat, or
before its next write once its own heartbeat is older than half the timeout, and stops writing
(LeaseLostError). At exit the holder marks its record released; `study status` shows the newest
record. Heartbeats compare the record's time (the writer's clock) with the reader's: hosts whose
clocks disagree by more than a fraction of the timeout should use a longer one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from trainables import storage

LEASE_DIR = "lease"
_PREFIX, _SUFFIX = "gen-", ".json"
# Some S3-compatible servers (moto's, which the tests use) check If-None-Match and write without
# one lock, so two PUTs in the same instant can both succeed; after this pause the read-back
# shows which one landed last, and only that driver goes on. S3 itself decides atomically.
_S3_SETTLE_S = 0.3


class LeaseHeldError(RuntimeError):
    """Another driver holds the study's lease."""


class LeaseLostError(RuntimeError):
    """This driver's lease was taken over (its heartbeat went stale): it must stop writing."""


@dataclass(frozen=True)
class LeaseRecord:
    """Who holds (or last held) a study's lease."""

    generation: int
    holder: str
    host: str
    pid: int
    ray_job: str | None
    started_at: float
    heartbeat_at: float
    released_at: float | None = None
    machine: str | None = None  # boot id and PID namespace: where `pid` means this process

    def age_s(self, now: float) -> float:
        return now - self.heartbeat_at

    def describe(self) -> str:
        """'host:pid (Ray job X) since 2026-12-01 10:00:00 UTC'."""
        job = f" (Ray job {self.ray_job})" if self.ray_job else ""
        return f"{self.host}:{self.pid}{job} since {_when(self.started_at)}"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def this_machine() -> str | None:
    """The boot and PID namespace of this process (Linux): two records with the same value
    name processes of the same PID table, so a missing PID is a dead holder."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


def holder_is_gone(record: LeaseRecord) -> bool:
    """Whether the holder was a process of this machine that no longer exists."""
    if record.machine is None or record.machine != this_machine():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    return False


def current_ray_job() -> str | None:
    """The Ray job (submission id) this process is the entrypoint of, if any."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        job: Any = json.loads(raw).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
    return str(job) if job else None


class Store(Protocol):
    """Where the records live: create-if-absent must be atomic."""

    def generations(self) -> list[int]: ...

    def read(self, generation: int) -> bytes | None: ...

    def create(self, generation: int, data: bytes) -> bool: ...

    def overwrite(self, generation: int, data: bytes) -> None: ...

    def delete(self, generation: int) -> None: ...


def _name(generation: int) -> str:
    return f"{_PREFIX}{generation:06d}{_SUFFIX}"


def _generation(name: str) -> int | None:
    if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
        digits = name[len(_PREFIX) : -len(_SUFFIX)]
        return int(digits) if digits.isdigit() else None
    return None


class LocalStore:
    """Records in a local folder; a record appears complete or not at all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def generations(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_generation(p.name) for p in self.folder.iterdir())
        return sorted(g for g in found if g is not None)

    def read(self, generation: int) -> bytes | None:
        try:
            return (self.folder / _name(generation)).read_bytes()
        except FileNotFoundError:
            return None

    def _complete_temporary(self, data: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def create(self, generation: int, data: bytes) -> bool:
        tmp = self._complete_temporary(data)
        try:
            os.link(tmp, self.folder / _name(generation))  # fails if it exists: atomic
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def overwrite(self, generation: int, data: bytes) -> None:
        os.replace(self._complete_temporary(data), self.folder / _name(generation))

    def delete(self, generation: int) -> None:
        (self.folder / _name(generation)).unlink(missing_ok=True)


class S3Store:
    """Records as S3 objects; created with a conditional PUT (If-None-Match: *)."""

    def __init__(self, uri: str) -> None:
        import boto3

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, f"{prefix.rstrip('/')}/" if prefix else ""
        self.client = boto3.client("s3")

    def generations(self) -> list[int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        names = (
            obj["Key"].rsplit("/", 1)[-1] for page in pages for obj in page.get("Contents", [])
        )
        return sorted(g for g in map(_generation, names) if g is not None)

    def read(self, generation: int) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + _name(generation))
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = body["Body"].read()
        return data

    def create(self, generation: int, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        key = self.prefix + _name(generation)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        time.sleep(_S3_SETTLE_S)
        return self.read(generation) == data

    def overwrite(self, generation: int, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + _name(generation), Body=data)

    def delete(self, generation: int) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + _name(generation))


class FsspecStore:
    """Records on another filesystem (gs://, memory://, ...): create checks, then writes, which
    is not atomic there; the lease then keeps honest drivers apart but cannot settle a race."""

    def __init__(self, location: str) -> None:
        self.location = location

    def generations(self) -> list[int]:
        if not storage.exists(self.location):
            return []
        names = (name for name, is_dir in storage.list_dir(self.location) if not is_dir)
        return sorted(g for g in map(_generation, names) if g is not None)

    def read(self, generation: int) -> bytes | None:
        path = storage.join(self.location, _name(generation))
        return storage.read_bytes(path) if storage.exists(path) else None

    def create(self, generation: int, data: bytes) -> bool:
        if self.read(generation) is not None:
            return False
        self.overwrite(generation, data)
        return self.read(generation) == data

    def overwrite(self, generation: int, data: bytes) -> None:
        storage.write_bytes(storage.join(self.location, _name(generation)), data)

    def delete(self, generation: int) -> None:
        storage.remove(storage.join(self.location, _name(generation)))


def open_store(results_dir: str) -> Store:
    """The lease's store under a results root (a local folder, s3://, or another URI)."""
    location = storage.join(results_dir, LEASE_DIR)
    if not storage.is_remote(location):
        return LocalStore(Path(storage.resolve(location)[1]))
    if location.startswith("s3://"):
        return S3Store(location)
    return FsspecStore(location)


def _decode(data: bytes | None) -> LeaseRecord | None:
    if data is None:
        return None
    try:
        return LeaseRecord(**json.loads(data))
    except (ValueError, TypeError):
        return None  # not a lease record: ignored


def read_lease(results_dir: str) -> LeaseRecord | None:
    """The newest lease record of a study (None when no driver ever held it)."""
    store = open_store(results_dir)
    for generation in reversed(store.generations()):
        record = _decode(store.read(generation))
        if record is not None:
            return record
    return None


def describe_lease(record: LeaseRecord | None, timeout_s: float, now: float | None = None) -> str:
    """One line for `study status`: who holds the lease, or who held it last."""
    if record is None:
        return "lease: free (no driver has run this study)"
    now = time.time() if now is None else now
    if record.released_at is not None:
        return (
            f"lease: free (last held by {record.describe()}, released {_when(record.released_at)})"
        )
    age = record.age_s(now)
    if age > timeout_s:
        return (
            f"lease: stale, held by {record.describe()} (no heartbeat for {age:.0f} s, "
            f"over the {timeout_s:g} s timeout): the next study run takes it over"
        )
    return f"lease: held by {record.describe()}, heartbeat {age:.0f} s ago"


class StudyLease:
    """The lease of one driver on one results root: acquire, heartbeat, check, release."""

    def __init__(
        self,
        results_dir: str,
        timeout_s: float,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.results_dir, self.timeout_s, self.say, self.clock = results_dir, timeout_s, say, clock
        self.store = open_store(results_dir)
        self.record: LeaseRecord | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def acquire(self) -> LeaseRecord:
        """Take the lease, or raise LeaseHeldError naming the driver that holds it."""
        for _ in range(10):
            generations = self.store.generations()
            newest = generations[-1] if generations else 0
            held = _decode(self.store.read(newest)) if newest else None
            if newest and held is None:
                continue  # deleted meanwhile by a driver that took over: look again
            now = self.clock()
            if held is not None and held.released_at is None:
                if holder_is_gone(held):
                    why = f"its process {held.pid} on this machine is gone"
                elif held.age_s(now) > self.timeout_s:
                    why = f"no heartbeat for {held.age_s(now):.0f} s (timeout {self.timeout_s:g} s)"
                else:
                    raise LeaseHeldError(self._held_message(held, now))
                self.say(f"WARNING: taking over the study's lease from {held.describe()}: {why}")
            mine = LeaseRecord(
                generation=newest + 1,
                holder=uuid.uuid4().hex,
                host=socket.gethostname(),
                pid=os.getpid(),
                ray_job=current_ray_job(),
                started_at=now,
                heartbeat_at=now,
                machine=this_machine(),
            )
            if self.store.create(mine.generation, _encode(mine)):
                self.record = mine
                for older in generations:
                    self.store.delete(older)
                self._start_heartbeat()
                return mine
        raise LeaseHeldError(
            f"the study's lease under {self.results_dir} changed hands ten times while this "
            "driver tried to take it: another driver is starting; see `study status`"
        )

    def _held_message(self, held: LeaseRecord, now: float) -> str:
        return (
            f"the study under {self.results_dir} is being run by {held.describe()} "
            f"(heartbeat {held.age_s(now):.0f} s ago): wait for it to end, or stop it; a "
            f"driver that died is taken over {self.timeout_s:g} s after its last heartbeat"
        )

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="study-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(0.2, self.timeout_s / 4)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as exc:  # a store that is briefly unreachable: try again later
                self.say(f"WARNING: could not renew the study's lease: {exc}")
            if self.lost:
                return

    def renew(self) -> None:
        """Write a fresh heartbeat, unless a newer generation exists: then the lease is lost."""
        with self._lock:
            if self.record is None or self.lost:
                return
            mine = self.record
            newest = max(self.store.generations(), default=0)
            on_disk = _decode(self.store.read(mine.generation))
            if newest > mine.generation or on_disk is None or on_disk.holder != mine.holder:
                taker = _decode(self.store.read(newest)) if newest else None
                who = taker.describe() if taker is not None else "another driver"
                self.lost = (
                    f"this driver's lease on {self.results_dir} was taken over by {who}: its "
                    f"heartbeat was older than {self.timeout_s:g} s; nothing more is written"
                )
                return
            self.record = replace(mine, heartbeat_at=self.clock())
            self.store.overwrite(mine.generation, _encode(self.record))

    def check(self) -> None:
        """Raise LeaseLostError when the lease was taken over (called before every write).

        A heartbeat older than half the timeout (the process was frozen, or the heartbeat
        could not be written) is renewed first, which finds out whether the lease is still
        this driver's: before that age, no other driver can have taken it over."""
        record = self.record
        stale = record is not None and self.clock() - record.heartbeat_at > self.timeout_s / 2
        if stale and not self.lost:
            self.renew()
        if self.lost:
            raise LeaseLostError(self.lost)

    def release(self) -> None:
        """Stop the heartbeat and mark the record released (a lost lease is left alone)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._lock:
            if self.record is None or self.lost:
                self.record = None
                return
            on_disk = _decode(self.store.read(self.record.generation))
            if on_disk is not None and on_disk.holder == self.record.holder:
                done = replace(self.record, released_at=self.clock())
                self.store.overwrite(done.generation, _encode(done))
            self.record = None


def _encode(record: LeaseRecord) -> bytes:
    return json.dumps(asdict(record), sort_keys=True).encode()
