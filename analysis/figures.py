"""Figures of a study from its tables, as PNG and SVG for print: one panel per (source, arch, norm).

Every point is a mean over seeds with its 95% Student t CI as error bar (no bar where a point has
a single seed); the figure title says so. Matplotlib is used through Figure objects (Agg canvas
for PNG), never pyplot: nothing opens a window, and the print style (fonts of 8 to 10 pt) is set
only inside an rc_context. A figure whose table is empty (a study without that evaluation) is
skipped: its function returns [].
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import matplotlib as mpl
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pyarrow.fs as pafs
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

from analysis.pareto import pareto_front
from analysis.stats import (
    aggregate_seeds,
    complete_tables,
    fill_block_columns,
    join_trials,
    split_fisher,
)

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

PANEL = ["source", "arch", "norm"]
# Typed with matplotlib's rc keys, so a misspelt key is a type error.
STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 10,
    "savefig.dpi": 200,
    "svg.fonttype": "none",  # text stays text in the SVG
}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", ":", "-."]
PROBE_LINESTYLES = ["-", "-."]  # dashed and dotted mark the baselines in the transfer figure
CI_NOTE = "mean ± 95% CI over seeds (Student t; no bar for one seed)"
NORM_NAMES = {"l2": "L2", "linf": "L∞"}


def _eps_label(norm: str) -> str:
    return f"training ε ({NORM_NAMES.get(norm, norm)}, pixel units of [0, 1] inputs)"


def _per_seed_stats(df: pd.DataFrame, keys: Sequence[str], value: str) -> pd.DataFrame:
    """Mean and CI over seeds per (keys, eps), the rows of one seed averaged first."""
    sub = df[df[value].notna() & df["eps"].notna()]
    if sub.empty:
        return pd.DataFrame(columns=[*keys, "eps", "mean", "std", "n", "ci_low", "ci_high"])
    per_seed = sub.groupby([*keys, "eps", "seed"], dropna=False)[value].mean().reset_index()
    return aggregate_seeds(per_seed, [*keys, "eps"], value)


def _yerr(stats: pd.DataFrame) -> np.ndarray:
    """Error bar lengths below and above the mean (0 where the CI is undetermined)."""
    low = (stats["mean"] - stats["ci_low"]).to_numpy(float)
    high = (stats["ci_high"] - stats["mean"]).to_numpy(float)
    return np.nan_to_num(np.vstack([low, high]), nan=0.0)


def _panels(
    blocks: Sequence[tuple[str, ...]], rows_per_block: int = 1, height: float = 2.8
) -> tuple[Figure, list[list[Axes]]]:
    """A figure with one column of `rows_per_block` axes per block, wrapped at 3 blocks a row."""
    ncols = min(3, len(blocks))
    nrows = math.ceil(len(blocks) / ncols)
    width = max(6.4, 3.6 * ncols)
    fig = Figure(figsize=(width, height * rows_per_block * nrows + 1.2), layout="constrained")
    grid = fig.subplots(nrows * rows_per_block, ncols, squeeze=False)
    axes = []
    for i in range(len(blocks)):
        r, c = divmod(i, ncols)
        axes.append([grid[r * rows_per_block + k][c] for k in range(rows_per_block)])
    for j in range(len(blocks), nrows * ncols):
        r, c = divmod(j, ncols)
        for k in range(rows_per_block):
            grid[r * rows_per_block + k][c].set_visible(False)
    return fig, axes


def _set_eps_axis(ax: Axes, eps: Sequence[float], norm: str, label: bool = True) -> None:
    """A symlog eps axis when the grid spans over 1.5 decades (ImageNet's 0.01 ... 5)."""
    ticks = sorted({float(e) for e in eps})
    positive = [e for e in ticks if e > 0]
    if positive and positive[-1] / positive[0] > 30:
        ax.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
        ax.set_xlim(-0.3 * positive[0] if ticks[0] == 0 else 0.7 * ticks[0], 1.4 * ticks[-1])
    ax.set_xticks(ticks)
    if len(ticks) > 6:
        ax.set_xticklabels([f"{e:g}" for e in ticks], rotation=45, ha="right")
        ax.tick_params(axis="x", pad=1)
    else:
        ax.set_xticklabels([f"{e:g}" for e in ticks])
    if label:
        ax.set_xlabel(_eps_label(norm))
    ax.grid(alpha=0.3)


def _legend(fig: Figure, axes: Sequence[Axes], extra: Sequence[Line2D] = ()) -> None:
    """One legend for the figure, under the panels, with each label once."""
    seen: dict[str, Artist] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    for handle in extra:
        seen.setdefault(str(handle.get_label()), handle)
    if seen:
        # Columns that fit the figure's width: about 0.07 in per character at 8 pt.
        per_entry = 0.8 + 0.07 * max(len(label) for label in seen)
        ncols = max(1, min(len(seen), int(fig.get_figwidth() / per_entry)))
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=ncols)


def _save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0])
    # The layout is solved while drawing the PNG; the SVG keeps it instead of solving it again.
    fig.set_layout_engine("none")
    fig.savefig(paths[1])
    return paths


def _blocks(df: pd.DataFrame) -> Iterator[tuple[tuple[str, ...], pd.DataFrame]]:
    for key, sub in df.groupby(PANEL, sort=True):
        yield tuple(str(k) for k in key), sub


def _title(key: tuple[str, ...], sub: pd.DataFrame) -> str:
    """The panel's (source, arch, norm), and its attack when it has only one."""
    attacks = sorted(a for a in sub["attack"].unique() if a) if "attack" in sub else []
    return " · ".join([*key, *attacks] if len(attacks) == 1 else key)


def _cap_accuracy(ax: Axes) -> None:
    """No accuracy axis above 1: a t interval of few seeds can reach past it."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -0.02), min(high, 1.02))


class _Style(TypedDict):
    """Line2D keyword arguments that tell series of one panel apart."""

    linestyle: str
    marker: str


def _style_of(i: int) -> _Style:
    return {"linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _errorbar(ax: Axes, stats: pd.DataFrame, color: int, label: str, style: int) -> None:
    """Means over seeds against eps, with their CI bars."""
    ax.errorbar(
        stats["eps"],
        stats["mean"],
        yerr=_yerr(stats),
        color=f"C{color}",
        capsize=3,
        label=label,
        **_style_of(style),
    )


def _plot_series(ax: Axes, sub: pd.DataFrame, series: Sequence[tuple[str, str]]) -> None:
    """Each (column, label) against eps, per attack of the panel (styled apart when several)."""
    attacks = sorted(sub["attack"].unique())
    for a, attack in enumerate(attacks):
        suffix = f" ({attack})" if len(attacks) > 1 and attack else ""
        rows = sub[sub["attack"] == attack]
        for m, (column, name) in enumerate(series):
            stats = _per_seed_stats(rows, [], column)
            if not stats.empty:
                _errorbar(ax, stats, m, f"{name}{suffix}", a * len(series) + m)


# ----- (a) source accuracy -----------------------------------------------------------------------
def plot_source_accuracy(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Source clean and PGD test accuracy against the training eps (claim C1)."""
    trials = fill_block_columns(complete_tables(tables)["trials"])
    if trials.empty or trials["test_acc_clean"].notna().sum() == 0:
        return []
    blocks = list(_blocks(trials))
    with mpl.rc_context(STYLE):
        fig, axes = _panels([k for k, _ in blocks])
        for (key, sub), (ax,) in zip(blocks, axes, strict=True):
            _plot_series(
                ax, sub, [("test_acc_clean", "clean"), ("test_acc_pgd", "PGD at the training ε")]
            )
            _set_eps_axis(ax, sub["eps"].dropna().tolist(), key[2])
            ax.set_ylabel("source test accuracy (fraction)")
            _cap_accuracy(ax)
            ax.set_title(_title(key, sub))
        _legend(fig, [a for (a,) in axes])
        fig.suptitle(f"Source accuracy vs training ε\n{CI_NOTE}")
        return _save(fig, out_dir, "source_accuracy")


# ----- (b) transfer ------------------------------------------------------------------------------
def plot_transfer(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Linear-probe accuracy per target against eps, with the raw-pixel (dashed) and random-init
    (dotted) baselines of each target as horizontal lines (claim C2, PAPER.md section 3)."""
    transfer = complete_tables(tables)["transfer"]
    probes = transfer[(transfer["kind"] == "probe") & transfer["test_acc"].notna()]
    if probes.empty:
        return []
    probes = fill_block_columns(probes)
    targets = sorted(transfer["target"].dropna().astype(str).unique())
    color = {t: f"C{i % 10}" for i, t in enumerate(targets)}
    raw = transfer[transfer["kind"] == "raw_pixels"].groupby("target")["test_acc"].mean()
    rand = transfer[transfer["kind"] == "random_init"]
    blocks = list(_blocks(probes))
    with mpl.rc_context(STYLE):
        fig, axes = _panels([k for k, _ in blocks])
        for (key, sub), (ax,) in zip(blocks, axes, strict=True):
            attacks = sorted(sub["attack"].unique())
            for target in sorted(sub["target"].astype(str).unique()):
                for a, attack in enumerate(attacks):
                    rows = sub[(sub["target"] == target) & (sub["attack"] == attack)]
                    stats = _per_seed_stats(rows, [], "test_acc")
                    suffix = f" ({attack})" if len(attacks) > 1 and attack else ""
                    ax.errorbar(
                        stats["eps"],
                        stats["mean"],
                        yerr=_yerr(stats),
                        color=color[target],
                        capsize=3,
                        label=f"{target}{suffix}",
                        linestyle=PROBE_LINESTYLES[a % len(PROBE_LINESTYLES)],
                        marker=MARKERS[a % len(MARKERS)],
                    )
                if target in raw.index and not pd.isna(raw[target]):
                    ax.axhline(raw[target], color=color[target], linestyle="--", linewidth=1)
                base = rand[
                    (rand["target"] == target)
                    & (rand["source"] == key[0])
                    & (rand["arch"] == key[1])
                ]["test_acc"]
                if base.notna().any():
                    ax.axhline(base.mean(), color=color[target], linestyle=":", linewidth=1.2)
            _set_eps_axis(ax, sub["eps"].dropna().tolist(), key[2])
            ax.set_ylabel("target test accuracy (fraction)")
            _cap_accuracy(ax)
            ax.set_title(_title(key, sub))
        proxies = [
            Line2D([], [], color="0.3", linestyle="--", label="raw-pixel probe (baseline)"),
            Line2D([], [], color="0.3", linestyle=":", label="random-init probe (baseline)"),
        ]
        _legend(fig, [a for (a,) in axes], proxies)
        fig.suptitle(f"Linear transfer vs training ε\n{CI_NOTE}")
        return _save(fig, out_dir, "transfer")


# ----- (c) trade-off -----------------------------------------------------------------------------
def find_pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by x.

    The front is analysis/pareto.py's pareto_front, so ties and duplicates follow its rule (both
    copies of a front point are on it); the indices are ordered by x (then by index) for drawing.
    """
    front = pareto_front(np.column_stack([np.asarray(x, float), np.asarray(y, float)]), True)
    return sorted(front.tolist(), key=lambda i: (x[i], i))


def compute_tradeoff_points(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per (source, arch, norm, attack, eps): source clean accuracy and the mean over targets of
    probe accuracy, each as mean and CI over seeds (trials lacking a target are left out)."""
    t = complete_tables(tables)
    transfer = t["transfer"]
    probes = transfer[(transfer["kind"] == "probe") & transfer["test_acc"].notna()]
    columns = [*PANEL, "attack", "eps", "x", "x_low", "x_high", "y", "y_low", "y_high", "n"]
    if probes.empty or t["trials"].empty:
        return pd.DataFrame(columns=columns)
    joined = fill_block_columns(join_trials(t["trials"], probes, ["test_acc_clean"]))
    joined = joined[joined["test_acc_clean"].notna()]
    keys = [*PANEL, "attack"]
    per_trial = (
        joined.groupby([*keys, "eps", "seed", "trial_key"], dropna=False)
        .agg(
            transfer=("test_acc", "mean"),
            clean=("test_acc_clean", "first"),
            targets=("target", "nunique"),
        )
        .reset_index()
    )
    block_targets = joined.groupby(keys)["target"].nunique().rename("block_targets")
    per_trial = per_trial.merge(block_targets.reset_index(), on=keys)
    per_trial = per_trial[per_trial["targets"] == per_trial["block_targets"]]
    if per_trial.empty:
        return pd.DataFrame(columns=columns)
    x = aggregate_seeds(per_trial, [*keys, "eps"], "clean")
    y = aggregate_seeds(per_trial, [*keys, "eps"], "transfer")
    out = x.rename(columns={"mean": "x", "ci_low": "x_low", "ci_high": "x_high"}).merge(
        y[[*keys, "eps", "mean", "ci_low", "ci_high"]].rename(
            columns={"mean": "y", "ci_low": "y_low", "ci_high": "y_high"}
        ),
        on=[*keys, "eps"],
    )
    return out[columns]


def plot_tradeoff(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Source clean accuracy (x) against mean transfer accuracy over targets (y), one point per
    eps, with the Pareto front of the points (PAPER.md section 1, C1 against C2)."""
    points = compute_tradeoff_points(tables)
    if points.empty:
        return []
    blocks = list(_blocks(points))
    with mpl.rc_context(STYLE):
        fig, axes = _panels([k for k, _ in blocks], height=3.2)
        for (key, sub), (ax,) in zip(blocks, axes, strict=True):
            attacks = sorted(sub["attack"].unique())
            for a, attack in enumerate(attacks):
                p = sub[sub["attack"] == attack].reset_index(drop=True)
                xerr = np.nan_to_num(
                    np.vstack([p["x"] - p["x_low"], p["x_high"] - p["x"]]).astype(float)
                )
                yerr = np.nan_to_num(
                    np.vstack([p["y"] - p["y_low"], p["y_high"] - p["y"]]).astype(float)
                )
                suffix = f" ({attack})" if len(attacks) > 1 and attack else ""
                ax.errorbar(
                    p["x"],
                    p["y"],
                    xerr=xerr,
                    yerr=yerr,
                    linestyle="none",
                    marker=MARKERS[a % len(MARKERS)],
                    color=f"C{a}",
                    capsize=2,
                    label=f"network at one ε{suffix}",
                )
                for _, r in p.iterrows():
                    ax.annotate(
                        f"ε={r['eps']:g}",
                        (r["x"], r["y"]),
                        xytext=(4, 4),
                        textcoords="offset points",
                        fontsize=8,
                    )
            xs, ys = sub["x"].astype(float).tolist(), sub["y"].astype(float).tolist()
            front = find_pareto_front(xs, ys)
            ax.plot(
                [xs[i] for i in front],
                [ys[i] for i in front],
                color="0.4",
                linestyle="--",
                drawstyle="steps-post" if len(front) > 1 else "default",
                linewidth=1.5,
                label="Pareto front",
                zorder=3,
            )
            ax.set_xlabel("source clean test accuracy (fraction)")
            ax.set_ylabel("mean transfer accuracy over targets (fraction)")
            ax.set_title(_title(key, sub))
            ax.grid(alpha=0.3)
            ax.margins(0.15)
            _cap_accuracy(ax)
        _legend(fig, [a for (a,) in axes])
        fig.suptitle(f"Accuracy vs transferability, one point per ε\n{CI_NOTE}")
        return _save(fig, out_dir, "tradeoff")


# ----- (d) Fisher --------------------------------------------------------------------------------
def plot_fisher(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Input and weight Fisher traces against eps on a log scale (claims C4, C5; PAPER.md 4),
    with the untrained network's of the same arch as dotted lines (where the scale starts)."""
    fisher, reference = split_fisher(complete_tables(tables)["fisher"])
    if fisher.empty or fisher[["input_trace", "weight_trace"]].notna().to_numpy().sum() == 0:
        return []
    fisher = fill_block_columns(fisher)
    blocks = list(_blocks(fisher))
    series = [("input_trace", "input Fisher tr F(x)"), ("weight_trace", "weight Fisher tr F(w)")]
    with mpl.rc_context(STYLE):
        fig, axes = _panels([k for k, _ in blocks])
        drew_reference = False
        for (key, sub), (ax,) in zip(blocks, axes, strict=True):
            _plot_series(ax, sub, series)
            base = reference[(reference["source"] == key[0]) & (reference["arch"] == key[1])]
            for m, (column, _) in enumerate(series):
                value = base[column].astype(float).mean() if not base.empty else float("nan")
                if not pd.isna(value) and value > 0:
                    ax.axhline(value, color=f"C{m}", linestyle=":", linewidth=1.2)
                    drew_reference = True
            # A CI reaching below 0 is drawn down to the bottom of the axis.
            ax.set_yscale("log", nonpositive="clip")
            _set_eps_axis(ax, sub["eps"].dropna().tolist(), key[2])
            ax.set_ylabel("Fisher trace (mean over samples, log scale)")
            ax.set_title(_title(key, sub))
        proxies = [Line2D([], [], color="0.3", linestyle=":", label="random-init network")]
        _legend(fig, [a for (a,) in axes], proxies if drew_reference else [])
        fig.suptitle(f"Fisher information vs training ε\n{CI_NOTE}")
        return _save(fig, out_dir, "fisher")


# ----- (e) inversion -----------------------------------------------------------------------------
def plot_inversion(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Reconstruction PSNR (top) and SSIM (bottom) against eps per variant (claim C6)."""
    inversion = complete_tables(tables)["inversion"]
    if inversion.empty or inversion[["psnr", "ssim"]].notna().to_numpy().sum() == 0:
        return []
    inversion = fill_block_columns(inversion)
    inversion["variant"] = inversion["variant"].fillna("").astype(str)
    variants = sorted(inversion["variant"].unique())
    blocks = list(_blocks(inversion))
    with mpl.rc_context(STYLE):
        fig, axes = _panels([k for k, _ in blocks], rows_per_block=2, height=2.5)
        drew_reference = False
        for (key, sub), (top, bottom) in zip(blocks, axes, strict=True):
            attacks = sorted(sub["attack"].unique())
            for a, attack in enumerate(attacks):
                for v, variant in enumerate(variants):
                    rows = sub[(sub["attack"] == attack) & (sub["variant"] == variant)]
                    suffix = f" ({attack})" if len(attacks) > 1 and attack else ""
                    for ax, column in ((top, "psnr"), (bottom, "ssim")):
                        stats = _per_seed_stats(rows, [], column)
                        if not stats.empty:
                            label = f"{variant or 'inversion'}{suffix}"
                            _errorbar(ax, stats, v, label, a * len(variants) + v)
            for ax, column in ((top, "mean_image_psnr"), (bottom, "mean_image_ssim")):
                line = sub[column].astype(float).mean()
                if not pd.isna(line):
                    ax.axhline(line, color="0.3", linestyle="--", linewidth=1)
                    drew_reference = True
            eps = sub["eps"].dropna().tolist()
            _set_eps_axis(top, eps, key[2], label=False)
            _set_eps_axis(bottom, eps, key[2])
            top.set_ylabel("PSNR (dB)")
            bottom.set_ylabel("SSIM (unitless)")
            top.set_title(_title(key, sub))
        proxies = [Line2D([], [], color="0.3", linestyle="--", label="mean image (no information)")]
        _legend(fig, [ax for pair in axes for ax in pair], proxies if drew_reference else [])
        fig.suptitle(f"Inversion quality vs training ε\n{CI_NOTE}")
        return _save(fig, out_dir, "inversion")


def _read_image(location: str) -> np.ndarray | None:
    """A PNG from a local path or a URI pyarrow reads; None when it is missing or unreadable."""
    try:
        if "://" in location:
            fs, path = pafs.FileSystem.from_uri(location)
            with fs.open_input_stream(path) as stream:
                data = stream.read()
        else:
            data = Path(location).read_bytes()
        return np.asarray(mpimg.imread(io.BytesIO(data), format="png"))
    except (OSError, ValueError, SyntaxError):
        return None


def plot_reconstructions(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Example reconstructions (the inversion table's grid_path PNGs): per (source, arch, norm,
    attack), one row per eps and one column per variant, from the smallest seed. Missing or
    unreadable images leave their cell blank; a block with none is skipped."""
    inversion = complete_tables(tables)["inversion"]
    rows = inversion[inversion["grid_path"].notna() & inversion["eps"].notna()]
    if rows.empty:
        return []
    rows = fill_block_columns(rows)
    rows["variant"] = rows["variant"].fillna("").astype(str)
    paths: list[Path] = []
    for key, sub in rows.groupby([*PANEL, "attack"], sort=True):
        seed = sub["seed"].min()
        sub = sub[sub["seed"] == seed] if not pd.isna(seed) else sub
        eps = sorted(sub["eps"].unique())
        variants = sorted(sub["variant"].unique())
        images = {
            (e, v): _read_image(str(r["grid_path"]))
            for (e, v), r in sub.groupby(["eps", "variant"]).first().iterrows()
        }
        if all(img is None for img in images.values()):
            continue
        with mpl.rc_context(STYLE):
            fig = Figure(figsize=(3.2 * len(variants), 1.6 * len(eps) + 0.8), layout="constrained")
            grid = fig.subplots(len(eps), len(variants), squeeze=False)
            for i, e in enumerate(eps):
                for j, v in enumerate(variants):
                    ax = grid[i][j]
                    img = images.get((e, v))
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if img is None:
                        ax.text(0.5, 0.5, "image missing", ha="center", va="center")
                    else:
                        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
                    if i == 0:
                        ax.set_title(f"variant {v or '-'}")
                    if j == 0:
                        ax.set_ylabel(f"ε = {e:g}")
            block = " · ".join(str(k) for k in key if k)
            seed_text = "" if pd.isna(seed) else f", seed {int(seed)}"
            fig.suptitle(f"Reconstructions from the representation: {block}{seed_text}")
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(k) for k in key if k))
            paths += _save(fig, out_dir, f"reconstructions-{slug}")
    return paths


FIGURES = {
    "source_accuracy": plot_source_accuracy,
    "transfer": plot_transfer,
    "tradeoff": plot_tradeoff,
    "fisher": plot_fisher,
    "inversion": plot_inversion,
    "reconstructions": plot_reconstructions,
}


def write_figures(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Every figure the study's tables allow; the paths written (PNG and SVG of each)."""
    paths: list[Path] = []
    for plot in FIGURES.values():
        paths += plot(tables, out_dir)
    return paths


# ----- per trial ---------------------------------------------------------------------------------
def _tick_label_chars(ax: Axes) -> int:
    """The longest y tick label of an axes, in characters (what its left margin must hold)."""
    labels = ax.yaxis.get_major_formatter().format_ticks(ax.get_yticks().tolist())
    return max((len(label) for label in labels), default=0)


def plot_trial_curves(epochs: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Training curves of each trial (loss; clean and PGD test accuracy per epoch), one PNG per
    trial_key, for its MLflow run. Returns trial_key -> PNG path."""
    out: dict[str, Path] = {}
    if epochs.empty:
        return out
    # Every trial's figure has the same axes and labels: the layout solved for one is reused
    # (solving it took as long as drawing, 0.1 s a trial) until a trial's loss ticks are wider.
    layout: list[Bbox] = []
    layout_ticks = 0
    for key, sub in epochs.sort_values("epoch").groupby("trial_key", sort=True):
        with mpl.rc_context(STYLE):
            fig = Figure(figsize=(6.4, 2.6))
            loss_ax, acc_ax = fig.subplots(1, 2)
            epoch = sub["epoch"] + 1
            loss_ax.plot(epoch, sub["train_loss"], marker="o", color="C0")
            loss_ax.set_xlabel("epoch")
            loss_ax.set_ylabel("training loss (adversarial)")
            for i, (column, name) in enumerate(
                (
                    ("train_acc", "train"),
                    ("test_acc_clean", "test clean"),
                    ("test_acc_pgd", "test PGD"),
                )
            ):
                # The robust accuracy may be measured every few epochs only: skip the gaps.
                measured = sub[column].notna()
                acc_ax.plot(
                    epoch[measured],
                    sub.loc[measured, column],
                    marker=MARKERS[i],
                    color=f"C{i}",
                    label=name,
                )
            acc_ax.set_xlabel("epoch")
            acc_ax.set_ylabel("accuracy (fraction)")
            _cap_accuracy(acc_ax)
            acc_ax.legend()
            fig.suptitle(f"trial {key}")
            ticks = _tick_label_chars(loss_ax)
            reuse = bool(layout) and ticks <= layout_ticks
            if reuse:
                for ax, position in zip((loss_ax, acc_ax), layout, strict=True):
                    ax.set_position(position)
            else:
                fig.set_layout_engine("constrained")
            out_path = Path(out_dir)
            out_path.mkdir(parents=True, exist_ok=True)
            # PNG only, at screen resolution: one per trial, for its MLflow run.
            fig.savefig(out_path / f"trial_{key}.png", dpi=110)
            if not reuse:
                layout = [loss_ax.get_position(), acc_ax.get_position()]
                layout_ticks = ticks
            out[str(key)] = out_path / f"trial_{key}.png"
    return out
