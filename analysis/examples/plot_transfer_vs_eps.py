"""Linear transfer accuracy against the training eps, one line per target: a figure to adapt.

Reads a study's parquet tables (RESULTS/tables/NAME/part-*.parquet) through `analysis`, averages
the linear-probe accuracy over seeds (mean and 95% Student t CI per target and eps), draws one
line per target with CI error bars and each target's raw-pixel probe as a dotted horizontal line
in the same colour, saves the figure as PNG and prints the numbers it drew.

Run from the repository root (after `make demo`):

    .venv/bin/python analysis/examples/plot_transfer_vs_eps.py results/demo --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files only, never open a window
import matplotlib.pyplot as plt

from analysis import aggregate_seeds, join_trials, load_tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results/demo", help="results folder")
    parser.add_argument("--out", default=".", help="folder for transfer_vs_eps.png (default: .)")
    args = parser.parse_args()

    tables = load_tables(args.results)  # every table, with the columns analysis reads
    transfer = tables["transfer"]
    # The probe rows joined with their trial on trial_key: grid columns a row lacks come from the
    # trial, and the trial's test_acc_clean and test_acc_pgd come along (for other plots).
    probes = join_trials(tables["trials"], transfer[transfer["kind"] == "probe"])
    if probes.empty:
        raise SystemExit(f"{args.results}: no linear-probe rows in the transfer table yet")

    # One value per seed first (n then counts seeds), then mean and 95% CI over seeds.
    block = ["source", "arch", "norm", "attack"]  # one curve per block and target
    keys = [*block, "target", "eps"]
    per_seed = probes.groupby([*keys, "seed"], dropna=False)["test_acc"].mean().reset_index()
    stats = aggregate_seeds(per_seed, keys, "test_acc")
    raw = transfer[transfer["kind"] == "raw_pixels"].groupby("target")["test_acc"].mean()

    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    for i, (key, sub) in enumerate(stats.groupby([*block, "target"], dropna=False)):
        *where, target = key
        color = f"C{i}"
        below, above = sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]
        yerr = [below.fillna(0), above.fillna(0)]  # no bar where there is a single seed
        label = f"{target} ({', '.join(str(w) for w in where)})"
        ax.errorbar(
            sub["eps"], sub["mean"], yerr=yerr, color=color, marker="o", capsize=3, label=label
        )
        if target in raw.index:
            ax.axhline(raw[target], color=color, linestyle=":", label=f"{target}: raw pixels")
    ax.set_xlabel("training ε")
    ax.set_ylabel("linear transfer accuracy")
    ax.set_title("mean ± 95% CI over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "transfer_vs_eps.png"
    fig.savefig(path, dpi=150)
    print(f"figure: {path}")
    table = stats.rename(columns={"n": "seeds"}).drop(columns="std")
    formats = {"eps": "{:g}".format}  # accuracies with 3 decimals, eps as written in the sweep
    print(table.to_string(index=False, float_format="{:.3f}".format, formatters=formats))
    if not raw.empty:
        print("raw pixels: " + ", ".join(f"{t} {acc:.3f}" for t, acc in raw.items()))


if __name__ == "__main__":
    main()
