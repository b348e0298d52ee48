"""Optional packages made absent or broken for the rest of a test, whatever this machine has
(robustbench, torchattacks); not a test module itself."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest


def _forget(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
        monkeypatch.delitem(sys.modules, name)


class _Absent(importlib.abc.MetaPathFinder):
    """Finds no `package`, as an environment without it does."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if fullname.split(".")[0] == self.package:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=self.package)
        return None


def without_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """For the rest of the test, `import package` fails as it does where it is not installed."""
    _forget(monkeypatch, package)
    monkeypatch.setattr(sys, "meta_path", [_Absent(package), *sys.meta_path])


def broken_package(monkeypatch: pytest.MonkeyPatch, folder: Path, package: str) -> None:
    """A `package` that is installed but fails to import one of its own dependencies (as
    robustbench 1.1.1 does beside a setuptools without pkg_resources), with an empty
    `package.model_zoo` submodule."""
    root = folder / "site" / package
    (root / "model_zoo").mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text("from .loaders import CustomImageFolder\n")
    (root / "loaders.py").write_text("import atsweep_absent_dependency\n")
    (root / "model_zoo" / "__init__.py").write_text("")
    _forget(monkeypatch, package)
    monkeypatch.syspath_prepend(str(root.parent))
