"""The study lease on a local disk and on fsspec's memory://: one holder, refusals that name it,
takeover of a stale one, a slow holder that finds out, and a race between many at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from study.lease import (
    LeaseHeldError,
    LeaseLostError,
    StudyLease,
    describe_lease,
    open_store,
    read_lease,
)

pytestmark = pytest.mark.unit


class Clock:
    """A clock the test moves by hand (the lease reads the time only through it)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lease(root: str, clock: Clock, said: list[str] | None = None) -> StudyLease:
    # A long timeout: the heartbeat thread never beats during a test; renew() is called by hand.
    out = said if said is not None else []
    return StudyLease(root, timeout_s=600.0, say=out.append, clock=clock)


@pytest.fixture(params=["local", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "results")
    return f"memory://leases/{tmp_path.name}/results"


def test_one_holder_and_a_second_driver_refused_with_the_holders_name(root: str) -> None:
    clock = Clock()
    first = lease(root, clock)
    held = first.acquire()
    assert held.generation == 1 and read_lease(root) == held
    clock.now += 30
    with pytest.raises(LeaseHeldError) as refused:
        lease(root, clock).acquire()
    message = str(refused.value)
    assert f"{held.host}:{held.pid}" in message and "since" in message
    assert "heartbeat 30 s ago" in message and len(message.splitlines()) == 1
    assert "held by" in describe_lease(read_lease(root), 600.0, clock.now)
    first.release()
    record = read_lease(root)
    assert record is not None and record.released_at == clock.now
    assert describe_lease(record, 600.0, clock.now).startswith("lease: free (last held by")
    second = lease(root, clock)
    assert second.acquire().generation == 2
    assert open_store(root).generations() == [2]  # the older record is gone
    second.release()


def test_a_stale_holder_is_taken_over_with_a_warning_and_finds_out(root: str) -> None:
    clock = Clock()
    slow = lease(root, clock)
    slow.acquire()
    clock.now += 601  # no heartbeat for longer than the timeout: a dead or frozen driver
    assert "stale" in describe_lease(read_lease(root), 600.0, clock.now)
    said: list[str] = []
    taker = lease(root, clock, said)
    assert taker.acquire().generation == 2
    assert said and said[0].startswith("WARNING: taking over the study's lease from")
    # The old holder was only slow: before its next write it learns (its own heartbeat is older
    # than half the timeout, so it looks), and writes nothing more.
    with pytest.raises(LeaseLostError, match="taken over by"):
        slow.check()
    slow.release()  # a lost lease is left alone
    record = read_lease(root)
    assert record is not None and record.generation == 2 and record.released_at is None
    taker.release()


def test_a_holder_checks_without_looking_while_its_heartbeat_is_young(tmp_path: Path) -> None:
    clock = Clock()
    holder = lease(str(tmp_path / "results"), clock)
    holder.acquire()
    open_store(str(tmp_path / "results")).delete(1)  # were it to look, it would find it lost
    clock.now += 299  # under half of the 600 s timeout: no other driver can have taken over
    holder.check()
    clock.now += 2
    with pytest.raises(LeaseLostError):
        holder.check()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    root, clock = str(tmp_path / "results"), Clock()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = lease(root, clock)
    dead.acquire()
    record = dead.record
    assert record is not None and record.machine is not None
    # The record as a driver whose process has ended would have left it (killed: never released).
    from dataclasses import replace

    from study.lease import _encode

    open_store(root).overwrite(1, _encode(replace(record, pid=int(gone.stdout))))
    dead._stop.set()
    said: list[str] = []
    assert lease(root, clock, said).acquire().generation == 2  # no waiting for the timeout
    assert f"its process {int(gone.stdout)} on this machine is gone" in said[0]


def test_a_heartbeat_keeps_the_lease_fresh(root: str) -> None:
    clock = Clock()
    holder = lease(root, clock)
    holder.acquire()
    clock.now += 500
    holder.renew()
    clock.now += 500  # 1000 s since the start, but 500 since the heartbeat
    with pytest.raises(LeaseHeldError, match="heartbeat 500 s ago"):
        lease(root, clock).acquire()
    holder.release()


def test_of_many_drivers_starting_at_once_exactly_one_holds_the_lease(tmp_path: Path) -> None:
    root, clock = str(tmp_path / "results"), Clock()
    start = threading.Barrier(8)
    won: list[int] = []
    refused: list[str] = []

    def try_acquire(i: int) -> None:
        candidate = lease(root, clock)
        start.wait()
        try:
            candidate.acquire()
            won.append(i)
        except LeaseHeldError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=try_acquire, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert open_store(root).generations() == [1]


def test_the_background_heartbeat_renews_the_record(tmp_path: Path) -> None:
    root = str(tmp_path / "results")
    holder = StudyLease(root, timeout_s=1.0, say=lambda _: None)
    first = holder.acquire()
    deadline = threading.Event()
    for _ in range(200):  # wait for the condition (a renewed heartbeat), not for a time
        record = read_lease(root)
        if record is not None and record.heartbeat_at > first.heartbeat_at:
            break
        deadline.wait(0.05)
    else:
        pytest.fail("the heartbeat thread never renewed the lease")
    holder.release()
    released = read_lease(root)
    assert released is not None and released.released_at is not None
