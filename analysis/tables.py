"""Parquet tables -> pandas DataFrames (schema versions checked) -> the trade-off table of a study.

Every read of a table goes through load_table, which refuses a part written by a newer schema
version than this analysis knows (SchemaVersionError naming the file): stats.load_tables, the
trade-off table and the CLI's report all read through it.

The trade-off table has one row per (source, arch, norm, attack, eps) with, over seeds, the mean and
standard deviation of source clean and PGD accuracy, linear transfer accuracy per target and the
input and weight Fisher traces; below each (source, arch, norm) block come the random-init and
raw-pixel baselines of every target (PAPER.md section 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TABLES = ("trials", "epochs", "transfer", "fisher", "robustness", "inversion")
GROUP = ["source", "arch", "norm", "attack", "eps"]

# The schema version of study/sinks/parquet.py this analysis was written against; the contract
# test tests/unit/analysis/test_analysis_contract.py keeps the two equal.
KNOWN_SCHEMA_VERSION = 3
VERSION_KEY = b"atsweep.schema_version"


class SchemaVersionError(ValueError):
    """A part written by a newer schema than this analysis knows."""


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A local folder, or a URI pyarrow reads (s3://, gs://, hdfs://, file://)."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def _part_version(path: str, metadata: Mapping[bytes, bytes] | None) -> int:
    """The schema version a part's metadata records (1 for parts that predate the key).

    Raises SchemaVersionError naming the file when the version is not an integer or is newer
    than KNOWN_SCHEMA_VERSION.
    """
    raw = (metadata or {}).get(VERSION_KEY, b"1")
    try:
        version = int(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaVersionError(
            f"{path}: schema version {raw!r} is not an integer: the file was not written "
            "by atsweep's parquet sink; move it out of the table folder"
        ) from exc
    if version > KNOWN_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path}: written with table schema version {version}, but this analysis "
            f"knows versions up to {KNOWN_SCHEMA_VERSION}: update atsweep (analysis/) to "
            "read this study"
        )
    return version


def _part_paths(fs: pafs.FileSystem, root: str, name: str) -> list[str]:
    """The part files of table `name` under root/tables, sorted (none when the folder is absent)."""
    selector = pafs.FileSelector(f"{root}/tables/{name}", allow_not_found=True)
    return sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.base_name.startswith("part-") and info.base_name.endswith(".parquet")
    )


def check_schema_versions(results_dir: str | Path, name: str) -> int:
    """The newest schema version among the parts of a table (0 when none); raises
    SchemaVersionError naming the file when a part is newer than KNOWN_SCHEMA_VERSION.

    Reads only the parts' footers. Parts without the version key predate it and count as
    version 1. load_table makes the same check on every part it reads.
    """
    fs, root = _filesystem(str(results_dir))
    newest = 0
    for path in _part_paths(fs, root, name):
        metadata = pq.read_schema(path, filesystem=fs).metadata
        newest = max(newest, _part_version(path, metadata))
    return newest


def load_table(results_dir: str | Path, name: str) -> pd.DataFrame:
    """One table of a study as a DataFrame (RESULTS/tables/NAME is a folder of parquet parts).

    results_dir is a local folder or a URI such as s3://bucket/studies/NAME. Raises
    SchemaVersionError naming the file when a part was written by a newer schema version than
    KNOWN_SCHEMA_VERSION; parts of older versions read, their missing columns absent (or null
    where another part has them).
    """
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}: choose one of {', '.join(TABLES)}")
    fs, root = _filesystem(str(results_dir))
    if fs.get_file_info(f"{root}/tables").type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"no tables/ folder under {results_dir}: is this a study's results folder?"
        )
    parts = _part_paths(fs, root, name)
    if not parts:
        return pd.DataFrame()
    tables = []
    for path in parts:
        table = pq.read_table(path, filesystem=fs)
        # The version is checked on the table just read (its footer's metadata), so the check
        # costs no second read of the file, and before any part is combined with another.
        _part_version(path, table.schema.metadata)
        tables.append(table)
    # Parts written by an older schema version lack newer columns: those read as nulls.
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _with_columns(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """df with the given columns present (empty when a table has no parts yet)."""
    for column in [*GROUP, *columns]:
        if column not in df.columns:
            df[column] = pd.Series(dtype=object)
    return df


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
    """Mean and std over seeds per (source, arch, norm, eps), plus baseline rows (row_kind).

    Reads the tables through load_table, so a part from a newer schema version raises
    SchemaVersionError; parts of older versions read, a column they lack (schema v1 had no
    attack) as nulls.
    """
    trials = _with_columns(load_table(results_dir, "trials"), ["test_acc_clean", "test_acc_pgd"])
    transfer = _with_columns(load_table(results_dir, "transfer"), ["kind", "target", "test_acc"])
    fisher = _with_columns(load_table(results_dir, "fisher"), ["input_trace", "weight_trace"])
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
    robustness = _with_columns(
        load_table(results_dir, "robustness"), ["eval_attack", "eval_eps", "robust_acc"]
    )
    groups = robustness.groupby(["eval_attack", "eval_eps"]) if not robustness.empty else []
    for (attack, eval_eps), sub in groups:
        parts.append(_mean_std(sub, GROUP, "robust_acc", f"robust[{attack}@{eval_eps:.3g}]"))
    if not fisher.empty:
        parts.append(_mean_std(fisher, GROUP, "input_trace", "input_fisher"))
        parts.append(_mean_std(fisher, GROUP, "weight_trace", "weight_fisher"))
    inversion = _with_columns(load_table(results_dir, "inversion"), ["variant", "psnr"])
    for variant, sub in inversion.groupby("variant") if not inversion.empty else []:
        parts.append(_mean_std(sub, GROUP, "psnr", f"psnr[{variant}]"))
    finetune = transfer[transfer["kind"] == "finetune"]
    for target in targets:
        sub = finetune[finetune["target"] == target]
        if not sub.empty:
            parts.append(_mean_std(sub, GROUP, "test_acc", f"finetune[{target}]"))
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


def _cell(mean: float | None, std: float | None, digits: int) -> str:
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
            digits = 0 if ("fisher" in m or "psnr" in m) else 3
            cells.append(_cell(r.get(f"{m}_mean"), r.get(f"{m}_std"), digits))
        seeds = r.get("seeds")
        cells.append("" if seeds is None or pd.isna(seeds) else str(int(seeds)))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(out)
