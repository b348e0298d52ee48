"""Parquet tables -> pandas DataFrames -> the trade-off table of a study.

The trade-off table has one row per (source, arch, norm, attack, eps) with, over seeds, the mean and
standard deviation of source clean and PGD accuracy, linear transfer accuracy per target and the
input and weight Fisher traces; below each (source, arch, norm) block come the random-init and
raw-pixel baselines of every target (PAPER.md section 3).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TABLES = ("trials", "epochs", "transfer", "fisher")
GROUP = ["source", "arch", "norm", "attack", "eps"]


def load_table(results_dir: str | Path, name: str) -> pd.DataFrame:
    """One table of a study as a DataFrame (RESULTS/tables/NAME is a folder of parquet parts)."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}: choose one of {', '.join(TABLES)}")
    folder = Path(results_dir) / "tables" / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no {name} table under {Path(results_dir)}: is this a study's results folder?"
        )
    return pd.read_parquet(folder)


def _mean_std(df: pd.DataFrame, by: list[str], column: str, label: str) -> pd.DataFrame:
    grouped = df.groupby(by, dropna=False)[column]
    return pd.DataFrame(
        {
            f"{label}_mean": grouped.mean(),
            f"{label}_std": grouped.std(ddof=1),
            f"{label}_n": grouped.count(),
        }
    )


def tradeoff_table(results_dir: str | Path) -> pd.DataFrame:
    """Mean and std over seeds per (source, arch, norm, eps), plus baseline rows (row_kind)."""
    trials = load_table(results_dir, "trials")
    transfer = load_table(results_dir, "transfer")
    fisher = load_table(results_dir, "fisher")
    if trials.empty:
        return pd.DataFrame()
    parts = [
        _mean_std(trials, GROUP, "test_acc_clean", "clean"),
        _mean_std(trials, GROUP, "test_acc_pgd", "pgd"),
    ]
    probes = transfer[transfer["kind"] == "probe"]
    targets = sorted(transfer["target"].dropna().unique())
    for target in targets:
        sub = probes[probes["target"] == target]
        if not sub.empty:
            parts.append(_mean_std(sub, GROUP, "test_acc", f"transfer[{target}]"))
    if not fisher.empty:
        parts.append(_mean_std(fisher, GROUP, "input_trace", "input_fisher"))
        parts.append(_mean_std(fisher, GROUP, "weight_trace", "weight_fisher"))
    table = pd.concat(parts, axis=1).reset_index()
    table.insert(0, "row_kind", "trained")
    table["seeds"] = table.pop("clean_n")

    rows = [table]
    for (source, arch, norm), _ in table.groupby(["source", "arch", "norm"], dropna=False):
        for kind, label in (("random_init", "random init"), ("raw_pixels", "raw pixels")):
            base = transfer[transfer["kind"] == kind]
            if kind == "random_init":
                base = base[(base["source"] == source) & (base["arch"] == arch)]
            if base.empty:
                continue
            row: dict[str, object] = {
                "row_kind": label,
                "source": source,
                "arch": arch,
                "norm": norm,
                "attack": "",
                "eps": float("nan"),
            }
            for target, sub in base.groupby("target"):
                row[f"transfer[{target}]_mean"] = sub["test_acc"].mean()
                row[f"transfer[{target}]_std"] = sub["test_acc"].std(ddof=1)
                row["seeds"] = len(sub)
            rows.append(pd.DataFrame([row]))
    out = pd.concat(rows, ignore_index=True)
    order = {"trained": 0, "random init": 1, "raw pixels": 2}
    out["_order"] = out["row_kind"].map(order)
    out = out.sort_values(["source", "arch", "norm", "_order", "attack", "eps"])
    out = out.drop(columns="_order")
    return out.reset_index(drop=True)


def _cell(mean: object, std: object, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return ""
    text = f"{float(mean):.{digits}f}" if digits else f"{float(mean):.3g}"
    if std is not None and not pd.isna(std):
        text += f" ± {float(std):.{digits}f}" if digits else f" ± {float(std):.2g}"
    return text


def format_tradeoff(table: pd.DataFrame) -> str:
    """The trade-off table as aligned plain text (mean ± std over seeds)."""
    if table.empty:
        return "(no finished trials yet)"
    metrics = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    headers = ["source", "arch", "norm", "attack", "eps", *metrics, "seeds"]
    lines = []
    for _, r in table.iterrows():
        eps = r["row_kind"] if r["row_kind"] != "trained" else f"{r['eps']:g}"
        attack = "" if pd.isna(r["attack"]) else str(r["attack"])
        cells = [str(r["source"]), str(r["arch"]), str(r["norm"]), attack, eps]
        for m in metrics:
            digits = 0 if "fisher" in m else 3
            cells.append(_cell(r.get(f"{m}_mean"), r.get(f"{m}_std"), digits))
        seeds = r.get("seeds")
        cells.append("" if seeds is None or pd.isna(seeds) else str(int(seeds)))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(out)
