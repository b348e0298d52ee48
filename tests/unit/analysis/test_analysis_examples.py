"""The scripts in analysis/examples run on a synthetic study and print its planted numbers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import mean_ci
from tests.analysis_study import build_study, noisy

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "analysis" / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
PETS = {0.0: 0.80, 0.25: 0.85, 0.5: 0.90, 1.0: 0.82}


def write_study(results: Path, clean: dict[float, float], source: str = "cifar10") -> Path:
    build_study(
        results,
        sources=(source,),
        clean=noisy(clean, 0.005),
        pgd=noisy({0.0: 0.05, 0.25: 0.45, 0.5: 0.55, 1.0: 0.60}, 0.01),
        transfer={
            "pets": noisy(PETS, 0.01),
            "aircraft": noisy({0.0: 0.50, 0.25: 0.55, 0.5: 0.56, 1.0: 0.52}, 0.01),
        },
        raw_pixels={"pets": 0.30, "aircraft": 0.20},
        input_trace=noisy({0.0: 500.0, 0.25: 60.0, 0.5: 20.0, 1.0: 5.0}, 2.0),
        weight_trace=noisy({0.0: 80.0, 0.25: 40.0, 0.5: 30.0, 1.0: 20.0}, 1.0),
    )
    # A writer's hidden temporary, as a crash would leave it: never read.
    (results / "tables" / "trials" / ".part-9.parquet.tmp").write_bytes(b"not parquet")
    return results


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("studies")
    a = write_study(root / "a", {0.0: 0.95, 0.25: 0.92, 0.5: 0.88, 1.0: 0.80})
    b = write_study(root / "b", {0.0: 0.75, 0.25: 0.70, 0.5: 0.66, 1.0: 0.60}, "cifar100")
    return a, b


def run(script: str, *args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def lines_starting(out: str, *cells: str) -> list[list[str]]:
    rows = [line.split() for line in out.splitlines()]
    return [r for r in rows if r[: len(cells)] == list(cells)]


def test_plot_transfer_vs_eps(studies: tuple[Path, Path], tmp_path: Path) -> None:
    out = run("plot_transfer_vs_eps.py", studies[0], "--out", tmp_path)
    assert_png(tmp_path / "transfer_vs_eps.png")
    assert f"figure: {tmp_path / 'transfer_vs_eps.png'}" in out
    # source arch norm attack target eps mean seeds ci_low ci_high: the planted mean, its t CI.
    for eps, text in ((0.0, "0"), (0.25, "0.25"), (0.5, "0.5"), (1.0, "1")):
        (row,) = lines_starting(out, "cifar10", "resnet18", "l2", "pgd7", "pets", text)
        ci = mean_ci([PETS[eps] - 0.01, PETS[eps], PETS[eps] + 0.01])
        assert row[6:] == [f"{PETS[eps]:.3f}", "3", f"{ci['ci_low']:.3f}", f"{ci['ci_high']:.3f}"]
    assert "raw pixels: aircraft 0.200, pets 0.300" in out


@pytest.mark.parametrize("same", [False, True], ids=["two-studies", "same-folder-twice"])
def test_compare_studies(studies: tuple[Path, Path], tmp_path: Path, same: bool) -> None:
    a, b = studies
    second = a if same else b
    out = run("compare_studies.py", a, second, "--out", tmp_path)
    assert_png(tmp_path / "compare_clean_accuracy.png")
    assert f"B = {second}: {'cifar10' if same else 'cifar100'}/resnet18/l2/pgd7" in out
    # eps clean[A] clean[B] pgd[A] pgd[B] transfer[A] transfer[B] fisher[A] fisher[B] seeds x2
    # (transfer: the mean over pets and aircraft, e.g. (0.80 + 0.50) / 2 at eps 0)
    expected = {
        "0": ["0.950", "0.950" if same else "0.750", "0.050", "0.050", "0.650", "0.650", "500"],
        "1": ["0.800", "0.800" if same else "0.600", "0.600", "0.600", "0.670", "0.670", "5"],
    }
    for eps, cells in expected.items():
        (row,) = lines_starting(out, eps)
        assert row[1:] == [*cells, cells[-1], "3", "3"]
    verdicts = {r[0]: " ".join(r[1:5]) for r in (line.split() for line in out.splitlines()) if r}
    assert verdicts["C1"] == "1 holds 1 holds"
    assert verdicts["C4"] == "1 holds 1 holds"
    assert verdicts["C6"] == "no data no data"


def test_examples_read_parquet_only() -> None:
    assert {p.name for p in SCRIPTS} >= {"plot_transfer_vs_eps.py", "compare_studies.py"}
    allowed = {"__future__", "argparse", "pathlib", "analysis", "pandas", "numpy", "matplotlib"}
    for path in SCRIPTS:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add((node.module or "").split(".")[0])
        assert names <= allowed, f"{path.name} imports {names - allowed}"
        assert not names & {"torch", "ray", "mlflow", "study", "trainables"}
