"""Tune pickles its callbacks into the experiment state: the study's callback must pickle
whatever Ray's driver did to builtins.print (its log thread installs tqdm_ray's safe_print)."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import yaml

from study.runner import Study, StudyCallback
from study.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_the_callback_pickles_without_its_study_after_print_is_patched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import cloudpickle

    spec = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    spec["output"] = {"results_dir": str(tmp_path / "results")}
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(spec))
    study = Study(load_spec(tmp_path / "smoke.yaml"))
    assert study.say is print
    callback = StudyCallback(study)
    # What ray._private.worker does when the first worker log lines reach the driver.
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    with pytest.raises(Exception, match="print"):
        cloudpickle.dumps(study)  # the study itself no longer pickles ...
    restored = cloudpickle.loads(cloudpickle.dumps(callback))  # ... its callback does
    assert restored.study is None and restored.configs == {}
    assert type(restored).__name__ == type(callback).__name__
