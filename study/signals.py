"""SIGINT and SIGTERM on the driver: the study stops where it stands and says so.

Inside `interruptible()`, the first SIGINT (Ctrl-C) or SIGTERM (`ray job stop`, a scheduler)
raises Interrupted in the main thread, which the study turns into KILLED runs, flushed rows, a
released lease, one line saying what is unfinished and the exit status 128 + the signal (130,
143). A write in progress is not cut: inside `deferred()` the signal waits for the block to end.
A second signal while the study is stopping ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal asked the driver to stop. A KeyboardInterrupt, so that code which catches
    Exception (Tune's loop among it) lets it through and Ray's blocking calls, which run the
    signal handlers themselves and answer a KeyboardInterrupt with one of their own, stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.unfinished: tuple[int, int] | None = None  # (trials, evaluations), set by the study

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    active = False  # inside interruptible()
    depth = 0  # nesting of deferred() blocks
    pending: int | None = None  # a signal that arrived inside one
    stopping = False  # Interrupted was raised: the study is cleaning up
    signum: int | None = None  # the signal that stopped it


_state = _State()


def _handle(signum: int, frame: FrameType | None) -> None:
    if _state.stopping:
        print(
            f"study: {signal.Signals(signum).name} again while stopping: exiting now "
            "(runs may be left RUNNING; the next study run marks them KILLED)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)
    if _state.depth > 0:
        _state.pending = signum
        return
    _state.stopping, _state.signum = True, signum
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block (the main thread only)."""
    previous: dict[int, Any] = {s: signal.signal(s, _handle) for s in SIGNALS}
    _reset()
    _state.active = True
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _reset()


def reclaim() -> None:
    """Put the study's handlers back after a library replaced them: ray.init installs a C++
    handler for SIGTERM that aborts the process (no cleanup, exit 134)."""
    if _state.active:
        for s in SIGNALS:
            signal.signal(s, _handle)


def _reset() -> None:
    _state.depth, _state.pending, _state.stopping, _state.signum = 0, None, False, None
    _state.active = False


def as_interrupted(exc: KeyboardInterrupt) -> Interrupted:
    """The Interrupted behind a KeyboardInterrupt: itself, or the signal recorded when Ray
    replaced it with its own (a Ctrl-C outside interruptible() counts as SIGINT)."""
    if isinstance(exc, Interrupted):
        return exc
    _state.stopping = True
    return Interrupted(_state.signum or signal.SIGINT)


@contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside the block takes effect when the block ends."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending is not None and not _state.stopping:
            signum, _state.pending = _state.pending, None
            _state.stopping, _state.signum = True, signum
            raise Interrupted(signum)
