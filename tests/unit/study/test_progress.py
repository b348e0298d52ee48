"""The progress of a study run: counts, the estimate of the time left, and the three views."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from study.cli import main
from study.progress import (
    LIVE_ROWS,
    PlainView,
    Progress,
    QuietView,
    Work,
    clock_time,
    make_view,
    render,
)
from study.recorder import StudySummary

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def epoch(n: int, seconds: float, **metrics: float) -> dict[str, float]:
    return {"epoch": n, "time_this_iter_s": seconds, **metrics}


def four_trials(clock: Clock, queued_evals: list[int]) -> tuple[Progress, StudySummary]:
    summary = StudySummary(trials_total=5, trials_cached=1)
    progress = Progress("grid", summary, lambda: queued_evals[0], clock=clock)
    progress.start(
        Work(epochs_per_trial=4, evals_per_trial=2, cpus=2, cpus_per_trial=1, cpus_per_eval=1)
    )
    return progress, summary


def test_counts_follow_the_trials_and_the_queue() -> None:
    clock, queued = Clock(), [3]
    progress, summary = four_trials(clock, queued)
    snap = progress.snapshot()
    assert (snap.trials_queued, len(snap.running), snap.evals_queued) == (4, 0, 3)
    assert snap.evals_to_come == 8  # 4 trials not finished, 2 evaluations each
    progress.trial_started("a", "cell a", 4)
    progress.trial_started("b", "cell b", 4)
    snap = progress.snapshot()
    assert (snap.trials_queued, len(snap.running)) == (2, 2)
    assert snap.trials() == "trials 1/5 done, 2 running, 2 queued, 0 failed"
    summary.trials_done += 1
    progress.trial_ended("a")
    summary.trials_failed += 1
    progress.trial_ended("b")
    summary.evals_done, queued[0] = 2, 1
    clock.now += 75
    snap = progress.snapshot()
    assert (snap.trials_queued, len(snap.running), snap.trials_failed) == (2, 0, 1)
    assert snap.trials() == "trials 2/5 done, 0 running, 2 queued, 1 failed"
    assert snap.evals() == "evaluations 2 done, 1 queued, 0 failed, 4 to come with the trials"
    assert snap.elapsed_s == 75 and clock_time(snap.elapsed_s) == "0:01:15"


def test_the_estimate_is_the_work_left_at_the_measured_speeds_over_the_cpus() -> None:
    clock, queued = Clock(), [0]
    progress, summary = four_trials(clock, queued)
    progress.trial_started("a", "cell a", 4)
    progress.trial_started("b", "cell b", 4)
    assert progress.snapshot().eta() == "ETA: after the first epoch"
    progress.trial_epoch("a", "cell a", 4, epoch(0, 2.0))
    progress.trial_epoch("b", "cell b", 4, epoch(0, 4.0))
    snap = progress.snapshot()
    # a: 3 epochs x 2 s, b: 3 x 4 s, 2 trials not started: 2 x 4 epochs x the mean 3 s; over 2
    # CPUs: 21 s (more than b's own 12 s). The evaluations are not timed yet: left out, said so.
    assert snap.eta_s == pytest.approx((6 + 12 + 24) / 2) and not snap.eta_has_evals
    assert snap.eta() == "ETA ~0:00:21 + evaluations (none timed yet)"
    summary.evals_done, summary.eval_time_s = 2, 10.0  # 5 s each; 8 to come
    snap = progress.snapshot()
    assert snap.eta_s == pytest.approx((6 + 12 + 24 + 8 * 5) / 2) and snap.eta_has_evals
    # One trial left, alone on the cluster: its own epochs bound the estimate from below.
    summary.trials_done, summary.trials_cached, summary.evals_done = 3, 1, 10
    progress.trial_ended("a")
    snap = progress.snapshot()
    assert snap.trials_queued == 0 and snap.eta_s == pytest.approx(max(12, (12 + 2 * 5) / 2))
    summary.trials_done = 4
    progress.trial_ended("b")
    assert progress.snapshot().eta() == "nothing left"


def test_an_epoch_keeps_the_measured_metrics_and_a_resumed_trial_its_epoch() -> None:
    progress, _ = four_trials(Clock(), [0])
    # A trial resumed from its checkpoint reports epoch 2 first: 3 of 4 done, one epoch timed.
    result = epoch(2, 1.5, **{"train/loss": 0.5, "test/acc_clean": 0.9, "test/acc_pgd": math.nan})
    progress.trial_epoch("a", "cell a", 4, result)
    (trial,) = progress.snapshot().running
    assert (trial.done, trial.measured, trial.epoch_s) == (3, 1, 1.5)
    assert trial.metrics == {"train/loss": 0.5, "test/acc_clean": 0.9}  # the NaN PGD is left out


def test_plain_lines_per_epoch_and_a_status_line_when_due() -> None:
    clock, lines = Clock(), []
    summary = StudySummary(trials_total=1)
    view = PlainView(lines.append, every=30, clock=clock)
    progress = Progress("grid", summary, lambda: 0, view, clock=clock)
    progress.start(Work(epochs_per_trial=2, evals_per_trial=0))
    progress.trial_started("a", "cell a", 2)
    clock.now += 10
    progress.trial_epoch("a", "cell a", 2, epoch(0, 10.0, **{"train/loss": 0.25}))
    assert lines == ["  epoch 1/2 " + f"{'cell a':<44}" + " loss 0.250  (10.0 s/epoch)"]
    progress.tick()
    assert len(lines) == 1  # 10 s since the start: no status line yet
    clock.now += 25
    progress.tick()
    assert lines[-1] == (
        "progress 0:00:35: trials 0/1 done, 1 running, 0 queued, 0 failed; evaluations 0 done, "
        "0 queued, 0 failed; ETA ~0:00:10"
    )
    progress.tick()
    assert len(lines) == 2  # the next one is 30 s away
    summary.trials_done = 1
    progress.trial_ended("a")
    progress.stop()
    progress.stop()  # stopped once: one closing line
    assert len(lines) == 3 and lines[-1].endswith("0 failed; nothing left")


def test_the_live_panel_lists_the_running_trials() -> None:
    from rich.console import Console

    progress, _ = four_trials(Clock(), [0])
    names = [f"cell {i}" for i in range(LIVE_ROWS + 2)]
    for i, name in enumerate(names):
        progress.trial_epoch(name, name, 4, epoch(0, 2.0, **{"train/acc": 0.5 + i / 100}))
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(render(progress.snapshot()))
    text = console.export_text()
    assert "study grid" in text and "ETA ~" in text
    assert "running trial" in text and "s/epoch" in text
    for i, name in enumerate(names[:LIVE_ROWS]):
        assert any(
            line.startswith(name) and f"{0.5 + i / 100:.3f}" in line for line in text.splitlines()
        )
    assert "... and 2 more running" in text and names[-1] not in text


def test_the_view_by_mode() -> None:
    assert isinstance(make_view("quiet"), QuietView) and not isinstance(
        make_view("quiet"), PlainView
    )
    assert isinstance(make_view("plain"), PlainView)
    assert isinstance(make_view("auto"), PlainView)  # pytest's stdout is not a terminal
    with pytest.raises(ValueError, match="auto, live, plain or quiet"):
        make_view("fancy")


def test_a_period_that_is_not_positive_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(ROOT / "sweeps" / "smoke.yaml"), "--progress-every", "0"])
    assert code == 2
    assert "--progress-every 0: the seconds between status lines must be positive" in (
        capsys.readouterr().err
    )
