"""Two studies side by side: per-eps summaries, the claims C1-C6, clean accuracy against eps.

For two results folders (e.g. studies with different architectures or sources), prints one row
per training eps with each study's source clean and PGD accuracy, mean linear transfer accuracy
(over targets) and input Fisher trace (means over seeds), then per claim C1-C6 the verdicts of
each study's headline checks (analysis.check_claims), and saves compare_clean_accuracy.png:
clean accuracy against eps for both, mean ± 95% CI over seeds. A summary pools the blocks
(source, arch, norm, attack) of a study: compare studies of one block each, or filter first.

Run from the repository root (the same folder twice works too):

    .venv/bin/python analysis/examples/compare_studies.py results/demo results/other --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files only, never open a window
import matplotlib.pyplot as plt
import pandas as pd

from analysis import CLAIMS, aggregate_seeds, check_claims, load_tables

BLOCK = ["source", "arch", "norm", "attack"]


def summarize(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per eps: means over a study's trials (seeds) and, for transfer, targets."""
    trials, transfer, fisher = tables["trials"], tables["transfer"], tables["fisher"]
    probes = transfer[transfer["kind"] == "probe"]
    columns = {
        "clean": trials.groupby("eps")["test_acc_clean"].mean(),
        "pgd": trials.groupby("eps")["test_acc_pgd"].mean(),
        "transfer": probes.groupby("eps")["test_acc"].mean().astype(float),
        "input_fisher": fisher.groupby("eps")["input_trace"].mean().astype(float),
        "seeds": trials.groupby("eps")["seed"].nunique(),
    }
    return pd.DataFrame(columns)


def verdicts(claims: pd.DataFrame) -> dict[str, str]:
    """Per claim, how many of its headline checks hold, fail or stay undetermined."""
    heads = claims[claims["headline"].astype(bool)]
    out = {}
    for claim in CLAIMS:
        counts = heads.loc[heads["claim"] == claim, "verdict"].value_counts()
        out[claim] = ", ".join(f"{n} {verdict}" for verdict, n in counts.items()) or "no data"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", nargs="?", default="results/demo", help="first results folder")
    parser.add_argument("b", nargs="?", help="second results folder (default: the first)")
    parser.add_argument("--out", default=".", help="folder for the figure (default: .)")
    args = parser.parse_args()

    paths = {"A": args.a, "B": args.b or args.a}
    studies = {label: load_tables(path) for label, path in paths.items()}
    for label, path in paths.items():
        if studies[label]["trials"].empty:
            raise SystemExit(f"{path}: no finished trials yet")
        rows = studies[label]["trials"][BLOCK].itertuples(index=False)
        blocks = sorted({"/".join(str(v) for v in row if pd.notna(v)) for row in rows})
        print(f"{label} = {path}: {'; '.join(blocks)}")

    # Side by side: each metric's column for A, then for B, one row per eps.
    side = pd.concat({label: summarize(t) for label, t in studies.items()}, axis=1)
    side = side.swaplevel(axis=1)[["clean", "pgd", "transfer", "input_fisher", "seeds"]]
    side.columns = [f"{metric}[{label}]" for metric, label in side.columns]
    side = side.rename_axis("eps").reset_index()
    formats = {c: "{:.4g}".format for c in side.columns if c.startswith(("input", "seeds"))}
    formats["eps"] = "{:g}".format
    print(side.to_string(index=False, float_format="{:.3f}".format, formatters=formats, na_rep="-"))

    print(f"\n{'claim':<6} {'A (headline checks)':<29} {'B (headline checks)':<29} statement")
    a, b = verdicts(check_claims(studies["A"])), verdicts(check_claims(studies["B"]))
    for claim, statement in CLAIMS.items():
        print(f"{claim:<6} {a[claim]:<29} {b[claim]:<29} {statement}")

    fig, ax = plt.subplots(figsize=(5.0, 3.5), layout="constrained")
    for (label, tables), style in zip(studies.items(), ("o-", "s--"), strict=True):
        # One value per seed at each eps (the mean of its blocks), then mean and CI over seeds.
        trials = tables["trials"]
        per_seed = trials.groupby(["eps", "seed"])["test_acc_clean"].mean().reset_index()
        stats = aggregate_seeds(per_seed, ["eps"], "test_acc_clean")
        yerr = [stats["mean"] - stats["ci_low"], stats["ci_high"] - stats["mean"]]
        yerr = [e.fillna(0) for e in yerr]  # no bar where there is a single seed
        name = f"{label}: {Path(paths[label]).name}"
        ax.errorbar(stats["eps"], stats["mean"], yerr=yerr, fmt=style, capsize=3, label=name)
    ax.set_xlabel("training ε")
    ax.set_ylabel("source clean accuracy")
    ax.set_title("mean ± 95% CI over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "compare_clean_accuracy.png", dpi=150)
    print(f"\nfigure: {out / 'compare_clean_accuracy.png'}")


if __name__ == "__main__":
    main()
