"""A study's local Ray keeps its idle workers while trial actors hold every CPU (real Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Two workers run a task each; two actors then hold both CPUs for 2.5 s (the trials); two tasks
# run again (the evaluations). Printed: the task workers' PIDs before and after, once with the
# study's settings and once with Ray's default (idle workers killed after 1 s).
PROBE = """
import json, os, time
import ray
from study.launcher import configure_tune_environment

@ray.remote(num_cpus=1)
def pid() -> int:
    time.sleep(0.5)
    return os.getpid()

@ray.remote(num_cpus=1)
class Trial:
    def ready(self) -> int:
        return os.getpid()

def phase() -> dict:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    before = sorted(ray.get([pid.remote(), pid.remote()]))
    trials = [Trial.remote() for _ in range(2)]
    ray.get([t.ready.remote() for t in trials])
    time.sleep(2.5)
    for t in trials:
        ray.kill(t)
    after = sorted(ray.get([pid.remote(), pid.remote()]))
    ray.shutdown()
    return {"before": before, "after": after}

configure_tune_environment()
study = phase()
os.environ["RAY_idle_worker_killing_time_threshold_ms"] = "1000"
default = phase()
print(json.dumps({"study": study, "default": default}))
"""


def test_evaluations_reuse_the_workers_that_waited_out_the_trials() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNE_", "RAY_"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    pids = json.loads(out.stdout.strip().splitlines()[-1])
    # Ray's default kills the idle workers while the actors run: the probe does exercise it.
    assert not set(pids["default"]["after"]) & set(pids["default"]["before"]), pids
    # The study's setting keeps them: the second tasks run in the same processes.
    assert pids["study"]["after"] == pids["study"]["before"], pids
