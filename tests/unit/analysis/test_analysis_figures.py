"""Figures of a synthetic study: each writes a PNG and an SVG, and skips an empty table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from analysis.figures import (
    FIGURES,
    compute_tradeoff_points,
    find_pareto_front,
    plot_reconstructions,
    write_figures,
)
from analysis.stats import load_tables
from tests.analysis_study import EPS, build_study, noisy

pytestmark = pytest.mark.unit

Tables = Mapping[str, pd.DataFrame]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    results = tmp_path_factory.mktemp("study")
    images = results / "artifacts"
    images.mkdir()
    rng = np.random.default_rng(0)

    def grid_path(eps: float, seed: int, variant: str) -> str | None:
        if eps == 0.5 and variant == "tv":
            return str(images / "deleted.png")  # listed in the table, missing on disk
        path = images / f"{variant}-{eps:g}-{seed}.png"
        mpimg.imsave(path, rng.random((16, 32, 3)))
        return str(path)

    build_study(
        results,
        sources=("cifar10", "cifar100"),
        clean=noisy({0.0: 0.95, 0.25: 0.92, 0.5: 0.88, 1.0: 0.80}, 0.005),
        pgd=noisy({0.0: 0.05, 0.25: 0.45, 0.5: 0.55, 1.0: 0.60}, 0.01),
        transfer={
            "pets": noisy({0.0: 0.80, 0.25: 0.85, 0.5: 0.90, 1.0: 0.82}, 0.01),
            "aircraft": noisy({0.0: 0.50, 0.25: 0.55, 0.5: 0.56, 1.0: 0.52}, 0.01),
        },
        raw_pixels={"pets": 0.30, "aircraft": 0.20},
        random_init={"pets": 0.40, "aircraft": 0.25},
        input_trace=noisy({0.0: 500.0, 0.25: 60.0, 0.5: 20.0, 1.0: 5.0}, 2.0),
        weight_trace=noisy({0.0: 80.0, 0.25: 40.0, 0.5: 30.0, 1.0: 20.0}, 1.0),
        inversion={
            "plain": (
                noisy({e: 12 + 6 * e for e in EPS}, 0.3),
                noisy({e: 0.3 + 0.4 * e for e in EPS}, 0.02),
            ),
            "tv": (
                noisy({e: 13 + 6 * e for e in EPS}, 0.3),
                noisy({e: 0.35 + 0.4 * e for e in EPS}, 0.02),
            ),
        },
        grid_path=grid_path,
        fisher_random_init=(800.0, 120.0),
        mean_image=(14.0, 0.4),
    )
    return load_tables(results)


@pytest.fixture(scope="module")
def written(study: Tables, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every figure of the study, written once: file name -> path."""
    paths = write_figures(study, tmp_path_factory.mktemp("figures"))
    return {p.name: p for p in paths}


@pytest.mark.parametrize("name", ["source_accuracy", "transfer", "tradeoff", "fisher", "inversion"])
def test_each_figure_writes_png_and_svg(written: dict[str, Path], name: str) -> None:
    png, svg = written[f"{name}.png"], written[f"{name}.svg"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "cifar10 · resnet18 · l2" in text and "cifar100 · resnet18 · l2" in text
    assert "95% CI over seeds" in text


def test_figure_functions_return_what_they_write(study: Tables, tmp_path: Path) -> None:
    paths = FIGURES["source_accuracy"](study, tmp_path)
    assert paths == [tmp_path / "source_accuracy.png", tmp_path / "source_accuracy.svg"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_figures_label_axes_targets_and_baselines(written: dict[str, Path]) -> None:
    transfer = written["transfer.svg"].read_text()
    for label in ("pets", "aircraft", "raw-pixel probe", "random-init probe", "training ε (L2"):
        assert label in transfer
    assert "target test accuracy (fraction)" in transfer
    assert "Pareto front" in written["tradeoff.svg"].read_text()
    fisher = written["fisher.svg"].read_text()
    assert "log scale" in fisher and "random-init network" in fisher
    inversion = written["inversion.svg"].read_text()
    assert "PSNR (dB)" in inversion and "SSIM" in inversion and "plain" in inversion
    assert "mean image (no information)" in inversion


def test_reconstructions_skip_missing_images(written: dict[str, Path]) -> None:
    names = sorted(n for n in written if n.startswith("reconstructions"))
    assert names == [
        "reconstructions-cifar10-resnet18-l2-pgd7.png",
        "reconstructions-cifar10-resnet18-l2-pgd7.svg",
        "reconstructions-cifar100-resnet18-l2-pgd7.png",
        "reconstructions-cifar100-resnet18-l2-pgd7.svg",
    ]
    svg = written[names[1]].read_text()
    assert "image missing" in svg and "variant plain" in svg and "ε = 0.5" in svg
    assert len(written) == 2 * 5 + 2 * 2


def test_reconstructions_with_no_readable_image_write_nothing(
    study: Tables, tmp_path: Path
) -> None:
    tables = dict(study)
    # A URI goes through pyarrow's filesystems (file:// here: unit tests stay off the network).
    tables["inversion"] = study["inversion"].assign(grid_path=(tmp_path / "gone.png").as_uri())
    tables["inversion"].loc[::2, "grid_path"] = str(tmp_path / "missing.png")
    assert plot_reconstructions(tables, tmp_path / "out") == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_skip_empty_tables(tmp_path: Path, name: str) -> None:
    (tmp_path / "tables").mkdir()
    plot: Callable[[Tables, Path], list[Path]] = FIGURES[name]
    assert plot(load_tables(tmp_path), tmp_path / "figures") == []
    assert plot({}, tmp_path / "figures") == []
    assert not (tmp_path / "figures").exists()


def test_figures_of_a_study_with_one_seed_and_no_evaluations(tmp_path: Path) -> None:
    build_study(tmp_path / "r", seeds=(0,), clean=noisy({e: 0.9 - 0.1 * e for e in EPS}, 0.0))
    tables = load_tables(tmp_path / "r")
    paths = write_figures(tables, tmp_path / "figures")
    assert [p.name for p in paths] == ["source_accuracy.png", "source_accuracy.svg"]


def test_pareto_front() -> None:
    x = [0.95, 0.92, 0.88, 0.80, 0.85]
    y = [0.60, 0.70, 0.68, 0.75, 0.74]
    # (0.88, 0.68) is beaten by (0.92, 0.70); (0.80, 0.75) is on the front by its y.
    assert find_pareto_front(x, y) == [3, 4, 1, 0]
    assert find_pareto_front([0.5], [0.5]) == [0]


def test_tradeoff_points_average_targets_per_seed(study: Tables) -> None:
    points = compute_tradeoff_points(study)
    p = points[(points["source"] == "cifar10") & (points["eps"] == 0.5)].iloc[0]
    assert p["x"] == pytest.approx(0.88)
    assert p["y"] == pytest.approx((0.90 + 0.56) / 2)
    assert p["n"] == 3
    assert p["y_low"] < p["y"] < p["y_high"]
    assert len(points) == 2 * len(EPS)


def _epochs(key: str, loss: float, pgd_every: int = 1) -> pd.DataFrame:
    epoch = np.arange(6)
    return pd.DataFrame(
        {
            "trial_key": key,
            "epoch": epoch,
            "train_loss": loss * (1.0 + 1.0 / (1.0 + epoch)),
            "train_acc": 0.5 + 0.05 * epoch,
            "test_acc_clean": 0.6 + 0.05 * epoch,
            "test_acc_pgd": np.where(
                epoch % pgd_every == pgd_every - 1, 0.4 + 0.02 * epoch, np.nan
            ),
        }
    )


def test_trial_curves_one_png_per_trial_nothing_cut_off(tmp_path: Path) -> None:
    """The layout solved for one trial is reused for the next; a trial whose loss ticks are
    wider (losses in the hundred thousands) is laid out again: its y label stays inside."""
    from analysis.figures import plot_trial_curves

    epochs = pd.concat(
        [_epochs("a", 1.0), _epochs("b", 0.8, pgd_every=3), _epochs("c", 123456.7)]
    ).sample(frac=1.0, random_state=0)  # the table's rows come in any order
    written = plot_trial_curves(epochs, tmp_path)
    assert sorted(written) == ["a", "b", "c"]
    for key, path in written.items():
        assert path == tmp_path / f"trial_{key}.png"
        image = mpimg.imread(path)[..., :3]
        # Ink in the left margin's two outer pixel columns would be a label cut at the edge.
        assert image[:, :2].min() > 0.9, key
        # ... and the y label is there, a few pixels in.
        assert image[:, 2:40].min() < 0.5, key
    assert plot_trial_curves(epochs.iloc[:0], tmp_path / "none") == {}
