"""The progress of `study run` while it runs: what is done, running and queued, and what is left.

The driver's hooks feed it (a trial started, an epoch's result from Tune's callback, a trial
ended); the counts of finished work are the recorder's (StudySummary) and the evaluations queued
are the queue's. It is shown one of three ways:

- live: a panel redrawn in place by rich on a terminal (the study's other lines print above it);
- plain: when the output is not a terminal (CI, `ray job logs`, a file), one line per epoch and
  a status line every `every` seconds and at the end;
- quiet (`study run --quiet`): none of it.

The estimate of the time left is the work left at the speeds measured so far, spread over the
cluster's CPUs: each running trial's remaining epochs at its own mean epoch time, each trial not
started at the mean of every epoch measured, each evaluation (queued, or to come from the trials
not finished) at the mean evaluation time, each weighted by the CPUs it holds. It is never less
than the longest running trial's remaining epochs. Until an epoch has been measured there is
none; until an evaluation has been, it leaves the evaluations out and says so.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import IO, Any, Protocol

from study.recorder import StudySummary

Printer = Callable[[str], None]

# Tune's result keys shown per trial, with their short names.
EPOCH_METRICS = (
    ("train/loss", "loss"),
    ("train/acc", "acc"),
    ("test/acc_clean", "clean"),
    ("test/acc_pgd", "pgd"),
)
PLAIN_EVERY_S = 30.0
LIVE_ROWS = 12  # running trials listed in the panel; the rest are counted


@dataclass
class TrialProgress:
    """A running trial: its name, its epochs done of its epochs, its last metrics, its timing."""

    name: str
    epochs: int
    done: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    measured: int = 0  # epochs timed by this driver (a resumed trial's earlier ones are not)
    seconds: float = 0.0

    @property
    def epoch_s(self) -> float | None:
        return self.seconds / self.measured if self.measured else None


@dataclass(frozen=True)
class Work:
    """What the run set out to do and how the cluster holds it (for the estimate)."""

    epochs_per_trial: float = 0.0
    evals_per_trial: float = 0.0
    cpus: float = 1.0  # the cluster's CPUs
    cpus_per_trial: float = 1.0
    cpus_per_eval: float = 1.0


@dataclass(frozen=True)
class Snapshot:
    """The progress at one moment, as every view shows it."""

    name: str
    elapsed_s: float
    trials_total: int
    trials_cached: int
    trials_done: int
    trials_failed: int
    trials_queued: int
    evals_done: int
    evals_failed: int
    evals_queued: int
    evals_to_come: int
    running: tuple[TrialProgress, ...]
    eta_s: float | None
    eta_has_evals: bool

    def eta(self) -> str:
        if self.eta_s is None:
            return "ETA: after the first epoch"
        if not (self.running or self.trials_queued or self.evals_queued or self.evals_to_come):
            return "nothing left"
        text = f"ETA ~{clock_time(self.eta_s)}"
        return text if self.eta_has_evals else f"{text} + evaluations (none timed yet)"

    def trials(self, sep: str = ", ") -> str:
        parts = [
            f"trials {self.trials_done + self.trials_cached}/{self.trials_total} done",
            f"{len(self.running)} running",
            f"{self.trials_queued} queued",
            f"{self.trials_failed} failed",
        ]
        return sep.join(parts)

    def evals(self, sep: str = ", ") -> str:
        parts = [
            f"evaluations {self.evals_done} done",
            f"{self.evals_queued} queued",
            f"{self.evals_failed} failed",
        ]
        if self.evals_to_come:
            parts.append(f"{self.evals_to_come} to come with the trials")
        return sep.join(parts)


def clock_time(seconds: float) -> str:
    """H:MM:SS."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def epoch_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(
        f"{short} {metrics[key]:.3f}" for key, short in EPOCH_METRICS if key in metrics
    )


class View(Protocol):
    def start(self, progress: Progress) -> None: ...

    def epoch(self, trial: TrialProgress) -> None: ...

    def changed(self) -> None: ...

    def tick(self) -> None: ...

    def stop(self) -> None: ...


class Progress:
    """The state that the views show; fed by the driver's thread, read by a live view's."""

    def __init__(
        self,
        name: str,
        summary: StudySummary,
        evals_queued: Callable[[], int],
        view: View | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.summary, self.evals_queued, self.clock = name, summary, evals_queued, clock
        self.view: View = view if view is not None else QuietView()
        self.work = Work()
        self.started = clock()
        self.running: dict[str, TrialProgress] = {}
        self.epochs_measured = 0
        self.epoch_seconds = 0.0
        self._lock = threading.Lock()
        self._live = False

    # ----- the driver's events ------------------------------------------------------------------
    def start(self, work: Work) -> None:
        self.work = work
        self.view.start(self)
        self._live = True

    def stop(self) -> None:
        if self._live:
            self._live = False
            self.view.stop()

    def trial_started(self, trial_id: str, name: str, epochs: int) -> None:
        with self._lock:
            self.running.setdefault(trial_id, TrialProgress(name, epochs))
        self.view.changed()

    def trial_epoch(self, trial_id: str, name: str, epochs: int, result: dict[str, Any]) -> None:
        """An epoch's result from Tune (epoch counted from 0, its seconds in time_this_iter_s)."""
        with self._lock:
            trial = self.running.setdefault(trial_id, TrialProgress(name, epochs))
            trial.done = int(result.get("epoch", trial.done)) + 1
            trial.metrics = {
                k: float(result[k])
                for k, _ in EPOCH_METRICS
                if isinstance(result.get(k), (int, float)) and not math.isnan(result[k])
            }
            seconds = result.get("time_this_iter_s")
            if isinstance(seconds, (int, float)) and seconds >= 0:
                trial.measured += 1
                trial.seconds += float(seconds)
                self.epochs_measured += 1
                self.epoch_seconds += float(seconds)
            shown = replace(trial, metrics=dict(trial.metrics))
        self.view.epoch(shown)

    def trial_ended(self, trial_id: str) -> None:
        with self._lock:
            self.running.pop(trial_id, None)
        self.view.changed()

    def tick(self) -> None:
        """Called often by the driver's loops: a plain view prints when its line is due."""
        self.view.tick()

    # ----- what the views show ------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        s = self.summary
        with self._lock:
            running = tuple(replace(t, metrics=dict(t.metrics)) for t in self.running.values())
            mean_epoch = self.epoch_seconds / self.epochs_measured if self.epochs_measured else None
        ended = s.trials_cached + s.trials_done + s.trials_failed
        queued = max(0, s.trials_total - ended - len(running))
        evals_queued = self.evals_queued()
        to_come = round((len(running) + queued) * self.work.evals_per_trial)
        eta, has_evals = self.estimate(running, queued, evals_queued + to_come, mean_epoch)
        return Snapshot(
            self.name,
            self.clock() - self.started,
            s.trials_total,
            s.trials_cached,
            s.trials_done,
            s.trials_failed,
            queued,
            s.evals_done,
            s.evals_failed,
            evals_queued,
            to_come,
            running,
            eta,
            has_evals,
        )

    def estimate(
        self,
        running: tuple[TrialProgress, ...],
        queued: int,
        evals_left: int,
        mean_epoch: float | None,
    ) -> tuple[float | None, bool]:
        """Seconds left (None before any epoch is measured where trials are left), and whether
        the evaluations are in it."""
        w, s = self.work, self.summary
        if (running or queued) and mean_epoch is None:
            return None, False
        cpu_s, longest = 0.0, 0.0
        for t in running:
            left = max(0, t.epochs - t.done) * (t.epoch_s or mean_epoch or 0.0)
            cpu_s += left * w.cpus_per_trial
            longest = max(longest, left)
        cpu_s += queued * w.epochs_per_trial * (mean_epoch or 0.0) * w.cpus_per_trial
        has_evals = evals_left == 0 or s.evals_done > 0
        if evals_left and s.evals_done:
            cpu_s += evals_left * (s.eval_time_s / s.evals_done) * w.cpus_per_eval
        return max(longest, cpu_s / max(w.cpus, 1.0)), has_evals


# ----- the views ----------------------------------------------------------------------------------
class QuietView:
    """--quiet: nothing."""

    def start(self, progress: Progress) -> None:
        pass

    def epoch(self, trial: TrialProgress) -> None:
        pass

    def changed(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainView(QuietView):
    """Lines for a log: one per epoch, a status line every `every` seconds and one at the end."""

    def __init__(
        self,
        say: Printer = print,
        every: float = PLAIN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say, self.every, self.clock = say, every, clock
        self.progress: Progress | None = None
        self.last = 0.0

    def start(self, progress: Progress) -> None:
        self.progress, self.last = progress, self.clock()

    def epoch(self, trial: TrialProgress) -> None:
        took = f"  ({trial.seconds / trial.measured:.1f} s/epoch)" if trial.measured else ""
        self.say(
            f"  epoch {trial.done}/{trial.epochs} {trial.name:<44} {epoch_metrics(trial.metrics)}"
            f"{took}"
        )
        self.tick()

    def tick(self) -> None:
        if self.progress is not None and self.clock() - self.last >= self.every:
            self.status()

    def status(self) -> None:
        assert self.progress is not None
        self.last = self.clock()
        snap = self.progress.snapshot()
        self.say(
            f"progress {clock_time(snap.elapsed_s)}: {snap.trials()}; {snap.evals()}; {snap.eta()}"
        )

    def stop(self) -> None:
        if self.progress is not None:
            self.status()


class LiveView(QuietView):
    """A panel that rich redraws in place; what the study prints meanwhile goes above it."""

    def __init__(self, stream: IO[str] | None = None, refresh_per_second: float = 4.0) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.refresh_per_second = refresh_per_second
        self.live: Any = None

    def start(self, progress: Progress) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        self.live = Live(
            Panel(progress),
            console=console,
            refresh_per_second=self.refresh_per_second,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self.live.start()

    def epoch(self, trial: TrialProgress) -> None:
        self.changed()

    def changed(self) -> None:
        if self.live is not None:
            self.live.refresh()

    def stop(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()  # the last frame stays on the screen
            self.live = None


class Panel:
    """The live panel: rebuilt from a snapshot at every refresh."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> Any:
        return render(self.progress.snapshot())


def render(snap: Snapshot) -> Any:
    """The panel of a snapshot: the head line, the counts and a table of the running trials."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        (f"study {snap.name}", "bold"), f"  {clock_time(snap.elapsed_s)} elapsed  ", snap.eta()
    )
    lines: list[Any] = [head, Text(snap.trials(" · ")), Text(snap.evals(" · "))]
    if snap.running:
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("running trial")
        table.add_column("epoch", justify="right")
        for _, short in EPOCH_METRICS:
            table.add_column(short, justify="right")
        table.add_column("s/epoch", justify="right")
        for t in snap.running[:LIVE_ROWS]:
            cells = [f"{t.metrics[k]:.3f}" if k in t.metrics else "" for k, _ in EPOCH_METRICS]
            per_epoch = f"{t.epoch_s:.1f}" if t.epoch_s is not None else ""
            table.add_row(t.name, f"{t.done}/{t.epochs}", *cells, per_epoch)
        lines.append(table)
        if len(snap.running) > LIVE_ROWS:
            lines.append(Text(f"... and {len(snap.running) - LIVE_ROWS} more running"))
    return Group(*lines)


def make_view(mode: str, say: Printer = print, every: float = PLAIN_EVERY_S) -> View:
    """The view for `study run`: quiet, plain, live, or auto (live on a terminal, else plain)."""
    if mode == "auto":
        interactive = sys.stdout.isatty() and (sys.stdout.encoding or "").lower().startswith("utf")
        mode = "live" if interactive else "plain"
    if mode == "quiet":
        return QuietView()
    if mode == "plain":
        return PlainView(say, every)
    if mode == "live":
        return LiveView()
    raise ValueError(f"progress mode {mode!r}: expected auto, live, plain or quiet")
