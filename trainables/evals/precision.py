"""The estimators' precision: the Fisher traces and the linear probe always in fp32 or higher.

A trial may run its network under bf16 autocast (RunOptions.precision); an estimator called
inside such a region (a search trial's transfer objective, a user's notebook) would inherit it,
and a trace of squared gradients summed in bf16 keeps about three significant digits. These
functions turn autocast off for their duration, on every device where it is on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")

AUTOCAST_DEVICES = ("cpu", "cuda")


def full_precision(fn: Callable[P, R]) -> Callable[P, R]:
    """Run fn with autocast off (its tensors in the dtype they are given: fp32 or fp64)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with contextlib.ExitStack() as stack:
            for device in AUTOCAST_DEVICES:
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper
