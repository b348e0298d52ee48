"""Tune pickles its callbacks into the experiment state: the study's callback must pickle
whatever Ray's driver did to builtins.print (its log thread installs tqdm_ray's safe_print)."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.runner import Study
from study.spec import load_spec

ROOT = Path(__file__).resolve().parents[3]


def test_the_callback_pickles_without_its_study_after_print_is_patched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import cloudpickle

    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["output"] = {"results_dir": str(tmp_path / "results")}
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(spec))
    study = Study(load_spec(tmp_path / "smoke.yaml"))  # its printer: the builtin print
    callback = study.callback()
    # What ray._private.worker does when the first worker log lines reach the driver (a
    # test that ran Ray in this process may have done it already).
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    with pytest.raises(Exception, match="print"):
        cloudpickle.dumps(study)  # the study itself no longer pickles ...
    restored = cloudpickle.loads(cloudpickle.dumps(callback))  # ... its callback does
    assert restored.hooks is None and callback.hooks.recorder is study.recorder
    assert type(restored).__name__ == type(callback).__name__


def test_importing_the_runner_leaves_tunes_settings_alone() -> None:
    """Tune's and Ray's settings (no Tune loggers, no chdir, idle workers kept) are set by
    Study.run, not by an import: a program (or a test session) that imports study.runner and
    runs Tune or Ray itself keeps their defaults."""
    code = (
        "import json, os; before = dict(os.environ); import study.runner as r; "
        "on_import = sorted(set(os.environ) - set(before)); r.configure_tune_environment(); "
        "print(json.dumps([on_import, sorted(set(os.environ) - set(before))]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNE_", "RAY_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    on_import, by_study = json.loads(out.stdout.strip().splitlines()[-1])
    assert on_import == []
    assert {
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
        "RAY_CHDIR_TO_TRIAL_DIR",
        "RAY_idle_worker_killing_time_threshold_ms",
        "TUNE_DISABLE_SIGINT_HANDLER",
    } <= set(by_study)


def test_an_error_of_the_studys_hooks_leaves_fit_as_itself(
    tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune wraps an error raised in a callback into a TuneError that holds only its text; the
    study's fit() raises the hook's own error, so that `study run` explains a lease lost during
    a trial's epoch in one line and exits 2."""
    from ray import tune

    from study.launcher import fit
    from study.lease import LeaseLostError

    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["output"] = {"results_dir": str(tmp_path / "results")}
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(spec))
    callback = Study(load_spec(tmp_path / "smoke.yaml")).callback()
    lost = LeaseLostError("taken over by vm:1 since then; nothing more is written")

    def result(trial: object, result: dict) -> None:
        raise lost

    monkeypatch.setattr(callback.hooks, "started", lambda trial: None)  # no study payload here
    monkeypatch.setattr(callback.hooks, "result", result)

    def trainable(config: dict) -> None:
        tune.report({"epoch": 1})

    tuner = tune.Tuner(
        trainable,
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), callbacks=[callback]),
    )
    with pytest.raises(LeaseLostError) as raised:
        fit(tuner, callback)
    assert raised.value is lost and callback.hooks.error is lost
