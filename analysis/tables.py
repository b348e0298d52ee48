"""Parquet tables -> DataFrames (each row once, schema versions checked) -> the trade-off table.

Every read of a table goes through load_table: stats.load_tables, the trade-off table and the
CLI's report all read through it. load_table

- refuses a part written by a newer schema version than this analysis knows (SchemaVersionError
  naming the file);
- reads each row once while a compaction runs. A compaction writes one new part whose parquet
  metadata lists the parts it replaces (REPLACES_KEY), then deletes those; the reader skips
  every part that a part it read replaces, and lists the folder again when a listed part is gone
  before it could be read (at most LIST_ATTEMPTS listings, then TableChangingError);
- drops the rows whose key (KEYS: trial_key; trial_key and epoch; eval_key) repeats an earlier
  row, keeping the first written (parts in name order, and a part's name starts with the
  nanosecond timestamp of its writing), with one DuplicateRowsWarning per table read. Such rows
  come from two drivers writing one study at once, or from an interrupted compaction: every row
  would otherwise count twice (n = 2 seeds with std 0 for a study of one seed). The reader
  de-duplicates rather than failing so that a report can still be drawn, and warns so that the
  tables are repaired where the fault lies (`study compact RESULTS` removes the duplicates).

The trade-off table has one row per (source, arch, norm, attack, eps) with, over seeds, the mean and
standard deviation of source clean and PGD accuracy, linear transfer accuracy per target and the
input and weight Fisher traces; below each (source, arch, norm) block come the random-init and
raw-pixel baselines of every target (PAPER.md section 3).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TABLES = ("trials", "epochs", "transfer", "fisher", "robustness", "source", "inversion")
GROUP = ["source", "arch", "norm", "attack", "eps"]

# The key of each table: a row whose key repeats an earlier one is a duplicate. The same keys as
# study/sinks/parquet.py's KEYS (the contract test keeps them equal); declared here because
# analysis/ never imports study.
KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_key",),
    "epochs": ("trial_key", "epoch"),
    "transfer": ("eval_key",),
    "fisher": ("eval_key",),
    "robustness": ("eval_key",),
    "source": ("eval_key",),
    "inversion": ("eval_key",),
}

# The schema version of study/sinks/parquet.py this analysis was written against; the contract
# test tests/unit/analysis/test_analysis_contract.py keeps the two equal.
KNOWN_SCHEMA_VERSION = 5
VERSION_KEY = b"atsweep.schema_version"
# study/sinks/parquet.py writes this key into the parquet key-value metadata of a compacted part:
# a JSON list of the base names of the parts whose rows it holds (and which it then deletes).
REPLACES_KEY = b"atsweep.replaces"
# How many times a reader lists a table's folder when parts vanish under it (a compaction
# deleting the parts it replaced); one compaction costs at most one more listing.
LIST_ATTEMPTS = 5

Part = TypeVar("Part", pa.Table, pa.Schema)


class SchemaVersionError(ValueError):
    """A part written by a newer schema than this analysis knows."""


class TableChangingError(RuntimeError):
    """Parts of a table vanished while it was read, on every one of LIST_ATTEMPTS listings."""


class DuplicateRowsWarning(UserWarning):
    """Rows of a table whose key repeats an earlier row; load_table left them out."""


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


def _base_name(path: str) -> str:
    """The file name of a pyarrow path (pyarrow's filesystems separate with "/")."""
    return path.rsplit("/", 1)[-1]


def _replaced_parts(path: str, metadata: Mapping[bytes, bytes] | None) -> set[str]:
    """The base names of the parts a compacted part replaces (none for an ordinary part).

    Raises SchemaVersionError naming the file when REPLACES_KEY is not a JSON list of names.
    """
    raw = (metadata or {}).get(REPLACES_KEY)
    if raw is None:
        return set()
    try:
        names = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        names = None  # reported below, with the other malformed values
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SchemaVersionError(
            f"{path}: {REPLACES_KEY.decode()} is {raw[:80]!r}, not a JSON list of part names: "
            "the file was not written by atsweep's parquet sink; move it out of the table folder"
        )
    # A part never replaces itself: that would hide its own rows.
    return set(names) - {_base_name(path)}


def _part_paths(fs: pafs.FileSystem, root: str, name: str) -> list[str]:
    """The part files of table `name` under root/tables, sorted (none when the folder is absent)."""
    selector = pafs.FileSelector(f"{root}/tables/{name}", allow_not_found=True)
    return sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.base_name.startswith("part-") and info.base_name.endswith(".parquet")
    )


def _read_part(fs: pafs.FileSystem, path: str) -> pa.Table:
    """One part file, whole (its schema's metadata holds the version and what it replaces)."""
    return pq.read_table(path, filesystem=fs)


def _read_footer(fs: pafs.FileSystem, path: str) -> pa.Schema:
    """The schema of one part file, from its footer alone."""
    return pq.read_schema(path, filesystem=fs)


def _vanished(fs: pafs.FileSystem, path: str, exc: OSError) -> bool:
    """Whether exc, raised reading path, means the file is gone (a compaction deleted it).

    Local filesystems raise FileNotFoundError; an object store may raise a plain OSError (S3
    answers 403 rather than 404 for a missing object without list permission), so that case is
    told apart from a real I/O error by asking whether the path still exists.
    """
    if isinstance(exc, FileNotFoundError):
        return True
    return bool(fs.get_file_info(path).type == pafs.FileType.NotFound)


def _read_parts(
    fs: pafs.FileSystem,
    root: str,
    name: str,
    read: Callable[[pafs.FileSystem, str], Part],
    metadata_of: Callable[[Part], Mapping[bytes, bytes] | None],
) -> list[tuple[str, Part]]:
    """(path, what `read` returned) for each part of a table that no other part replaces.

    Every part read has its schema version checked. The rows of the parts returned are those of
    one consistent state of the folder: a part replaced by a part that was read is skipped, and a
    part gone before it could be read is harmless when a part read replaces it; otherwise the
    folder changed under the reader (a compaction wrote its part after the listing) and it is
    listed again, at most LIST_ATTEMPTS times before TableChangingError.
    """
    gone: list[str] = []
    for _ in range(LIST_ATTEMPTS):
        parts: list[tuple[str, Part]] = []
        gone = []
        for path in _part_paths(fs, root, name):
            try:
                part = read(fs, path)
            except OSError as exc:
                if not _vanished(fs, path, exc):
                    raise
                gone.append(_base_name(path))
                continue
            metadata = metadata_of(part)
            # The version is checked on what was just read (the footer's metadata), so the
            # check costs no second read of the file, and before parts are combined.
            _part_version(path, metadata)
            parts.append((path, part))
        replaced = set().union(*(_replaced_parts(p, metadata_of(t)) for p, t in parts))
        if replaced.issuperset(gone):
            return [(p, t) for p, t in parts if _base_name(p) not in replaced]
    raise TableChangingError(
        f"{root}/tables/{name}: parts vanished while the table was read, on each of "
        f"{LIST_ATTEMPTS} listings (last: {', '.join(gone)}), and no part read replaces them: "
        "a compaction or cleanup is deleting parts now; read the table again when it has finished"
    )


def check_schema_versions(results_dir: str | Path, name: str) -> int:
    """The newest schema version among the parts of a table (0 when none); raises
    SchemaVersionError naming the file when a part is newer than KNOWN_SCHEMA_VERSION.

    Reads only the parts' footers, listing again when parts vanish under it as load_table does.
    Parts without the version key predate it and count as version 1. load_table makes the same
    check on every part it reads.
    """
    fs, root = _filesystem(str(results_dir))
    parts = _read_parts(fs, root, name, _read_footer, lambda schema: schema.metadata)
    return max((_part_version(path, schema.metadata) for path, schema in parts), default=0)


def _drop_duplicate_keys(df: pd.DataFrame, name: str, results_dir: str | Path) -> pd.DataFrame:
    """df without the rows whose key repeats an earlier row (the first written is kept), with one
    DuplicateRowsWarning when there were any.

    A table that lacks a key column (an old or foreign part) is returned as is; a row with a
    null key column is never a duplicate (nothing identifies it).
    """
    key = list(KEYS[name])
    if df.empty or not set(key) <= set(df.columns):
        return df
    duplicated = df.duplicated(subset=key, keep="first") & df[key].notna().all(axis=1)
    count = int(duplicated.sum())
    if not count:
        return df
    warnings.warn(
        f"table {name} of {results_dir}: {count} duplicate row(s) left out, whose key "
        f"({', '.join(key)}) repeats an earlier row (the first written is kept): the study was "
        "written by two drivers at once, or a compaction was interrupted; "
        f"`study compact {results_dir}` removes them",
        DuplicateRowsWarning,
        stacklevel=3,
    )
    return df[~duplicated].reset_index(drop=True)


def load_table(results_dir: str | Path, name: str) -> pd.DataFrame:
    """One table of a study as a DataFrame (RESULTS/tables/NAME is a folder of parquet parts),
    each row once.

    results_dir is a local folder or a URI such as s3://bucket/studies/NAME. Raises
    SchemaVersionError naming the file when a part was written by a newer schema version than
    KNOWN_SCHEMA_VERSION; parts of older versions read, their missing columns absent (or null
    where another part has them).

    Safe while a compaction runs: a part named in the REPLACES_KEY metadata of a part read is
    skipped, and a part that vanishes between listing and reading makes the folder be listed
    again (TableChangingError after LIST_ATTEMPTS listings). Rows whose KEYS[name] repeats an
    earlier row are left out, the first written kept (parts are read in name order, and names
    start with a nanosecond timestamp), with one DuplicateRowsWarning naming the table, the
    count, the key and the fix (`study compact RESULTS`); they come from two drivers writing
    one study or an interrupted compaction. A table without its key columns reads as is.
    """
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}: choose one of {', '.join(TABLES)}")
    fs, root = _filesystem(str(results_dir))
    if fs.get_file_info(f"{root}/tables").type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"no tables/ folder under {results_dir}: is this a study's results folder?"
        )
    parts = _read_parts(fs, root, name, _read_part, lambda table: table.schema.metadata)
    if not parts:
        return pd.DataFrame()
    # Parts written by an older schema version lack newer columns: those read as nulls.
    tables = [table for _, table in parts]
    df = pa.concat_tables(tables, promote_options="default").to_pandas()
    return _drop_duplicate_keys(df, name, results_dir)


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


def superseded_imports(trials: pd.DataFrame) -> set[str]:
    """The trial_keys of imported networks whose file has changed since: an imported network is
    keyed by its file's sha256, so a new file under the same network name is a new trial, and
    the older one (completed earlier) must not count beside it as a second network."""
    needed = {"proposed_by", "config_json", "completed_at", "trial_key"}
    if trials.empty or not needed <= set(trials.columns):
        return set()
    imported = trials[trials["proposed_by"] == "imported"]
    if imported.empty:
        return set()
    names = imported["config_json"].map(lambda text: json.loads(text).get("name", ""))
    latest = imported.assign(_name=names).sort_values("completed_at")
    older = latest.duplicated("_name", keep="last")
    return set(latest.loc[older, "trial_key"])


class RemeasuredWarning(UserWarning):
    """Rows of a table that a later row measured again under other settings; the analysis left
    them out (they stay in the table)."""


# The columns that name one measurement whatever its settings: the network (a trained one by its
# trial_key; an untrained reference by its source, arch and seed; the raw pixels by nothing) and
# what the spec may list several of at once (targets, inversion variants, attacks and radii). A
# change of settings (the spec's scalars such as the probe's C grid, the Fisher's sigma or
# samples, or a default's: the inversion's start in schema v5) gives the same measurement a new
# eval_key, so the study computes it again and the table holds both rows; the analysis counts
# the latest of them, once.
MEASUREMENT = {
    "inversion": ("trial_key", "variant"),
    "robustness": ("trial_key", "eval_attack", "eval_eps"),
    "transfer": ("kind", "trial_key", "source", "arch", "seed", "target"),
    "fisher": ("kind", "trial_key", "source", "arch", "seed"),
}
# Absent from tables written before schema v4, and null in their rows: those were all of trained
# networks (split_fisher reads them so).
OPTIONAL_IDENTITY = {"kind"}
DEFAULT_KIND = {"fisher": "trained"}


def drop_remeasured(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """df without the rows that a later row of the same MEASUREMENT replaced (load_table keeps
    the order in which rows were written), with one RemeasuredWarning naming the count."""
    columns = [c for c in MEASUREMENT.get(name, ()) if c in df.columns]
    required = set(MEASUREMENT.get(name, ())) - OPTIONAL_IDENTITY
    if not columns or df.empty or not required <= set(df.columns):
        return df
    identity = df[columns]
    if "kind" in columns and name in DEFAULT_KIND:
        identity = identity.assign(kind=identity["kind"].astype(object).fillna(DEFAULT_KIND[name]))
    older = identity.duplicated(keep="last")
    if older.any():
        warnings.warn(
            f"{int(older.sum())} {name} rows were measured again later under other settings "
            f"(same {', '.join(columns)}, another eval_key: a changed spec or default); the "
            "analysis counts the latest of each",
            RemeasuredWarning,
            stacklevel=3,
        )
    return df[~older]


def drop_superseded(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every table without the rows of superseded imported networks (superseded_imports) and
    without the rows measured again later under other settings (drop_remeasured)."""
    gone = superseded_imports(tables.get("trials", pd.DataFrame()))
    out = {
        name: df[~df["trial_key"].isin(gone)] if gone and "trial_key" in df.columns else df
        for name, df in tables.items()
    }
    return {name: drop_remeasured(name, df) for name, df in out.items()}


def split_fisher(fisher: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fisher table's rows of trained networks, and those of the random-init references
    (kind random_init; rows written before schema v4 have no kind and are trained ones)."""
    if fisher.empty or "kind" not in fisher.columns:
        return fisher, fisher.iloc[0:0]
    reference = fisher["kind"].astype(object) == "random_init"
    return fisher[~reference], fisher[reference]


def fill_source_accuracy(trials: pd.DataFrame, source: pd.DataFrame) -> pd.DataFrame:
    """trials with the clean and PGD accuracy of each imported network, which its trials row
    leaves null (nothing trained it here), from its source-accuracy evaluation (the source
    table); a trained network's own values are kept."""
    if trials.empty or source.empty or "trial_key" not in source.columns:
        return trials
    measured = source.dropna(subset=["trial_key"]).drop_duplicates("trial_key", keep="last")
    measured = measured.set_index("trial_key")
    out = trials.copy()
    for column in ("test_acc_clean", "test_acc_pgd"):
        if column not in measured.columns:
            continue
        filled = out["trial_key"].map(measured[column])
        current = out[column] if column in out.columns else pd.Series(float("nan"), out.index)
        out[column] = current.where(current.notna(), filled).astype(float)
    return out


def _baseline_rows(
    table: pd.DataFrame, transfer: pd.DataFrame, fisher_reference: pd.DataFrame
) -> list[pd.DataFrame]:
    """The trade-off table's reference rows per (source, arch, norm): "random init" (its probe
    on each target and its Fisher) and "raw pixels" (the probe on each target)."""
    rows = []
    for (source, arch, norm), _ in table.groupby(["source", "arch", "norm"], dropna=False):
        for kind, label in (("random_init", "random init"), ("raw_pixels", "raw pixels")):
            base = transfer[transfer["kind"] == kind]
            reference = fisher_reference.iloc[0:0]
            if kind == "random_init":
                base = base[(base["source"] == source) & (base["arch"] == arch)]
                reference = fisher_reference[
                    (fisher_reference["source"] == source) & (fisher_reference["arch"] == arch)
                ]
            if base.empty and reference.empty:
                continue
            row: dict[str, object] = {
                "row_kind": label,
                "source": source,
                "arch": arch,
                "norm": norm,
                "attack": "",
                "eps": float("nan"),
            }
            seeds = 0
            for target, sub in base.groupby("target"):
                row[f"transfer[{target}]_mean"] = sub["test_acc"].mean()
                row[f"transfer[{target}]_std"] = sub["test_acc"].std(ddof=1)
                seeds = len(sub)
            for column, name in (
                ("input_trace", "input_fisher"),
                ("weight_trace", "weight_fisher"),
            ):
                values = reference[column].astype(float).dropna()
                if not values.empty:
                    row[f"{name}_mean"] = values.mean()
                    row[f"{name}_std"] = values.std(ddof=1)
                    seeds = max(seeds, len(values))
            row["seeds"] = seeds
            rows.append(pd.DataFrame([row]))
    return rows


def tradeoff_table(results_dir: str | Path) -> pd.DataFrame:
    """Mean and std over seeds per (source, arch, norm, eps), plus baseline rows (row_kind).

    Reads the tables through load_table, so a part from a newer schema version raises
    SchemaVersionError; parts of older versions read, a column they lack (schema v1 had no
    attack) as nulls.
    """
    loaded = drop_superseded({name: load_table(results_dir, name) for name in TABLES})
    trials = fill_source_accuracy(loaded["trials"], loaded["source"])
    trials = _with_columns(trials, ["test_acc_clean", "test_acc_pgd"])
    transfer = _with_columns(loaded["transfer"], ["kind", "target", "test_acc"])
    fisher, fisher_reference = split_fisher(
        _with_columns(loaded["fisher"], ["kind", "input_trace", "weight_trace"])
    )
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
    robustness = _with_columns(loaded["robustness"], ["eval_attack", "eval_eps", "robust_acc"])
    groups = robustness.groupby(["eval_attack", "eval_eps"]) if not robustness.empty else []
    for (attack, eval_eps), sub in groups:
        parts.append(_mean_std(sub, GROUP, "robust_acc", f"robust[{attack}@{eval_eps:.3g}]"))
    if not fisher.empty:
        parts.append(_mean_std(fisher, GROUP, "input_trace", "input_fisher"))
        parts.append(_mean_std(fisher, GROUP, "weight_trace", "weight_fisher"))
    inversion = _with_columns(
        loaded["inversion"], ["variant", "psnr", "mean_image_psnr", "relative_error"]
    )
    for variant, sub in inversion.groupby("variant") if not inversion.empty else []:
        parts.append(_mean_std(sub, GROUP, "psnr", f"psnr[{variant}]"))
        parts.append(_mean_std(sub, GROUP, "relative_error", f"feature_error[{variant}]"))
    if inversion["mean_image_psnr"].notna().any():
        # The no-information line: the dataset's mean image against the same originals.
        parts.append(_mean_std(inversion, GROUP, "mean_image_psnr", "psnr[mean image]"))
    finetune = transfer[transfer["kind"] == "finetune"]
    for target in targets:
        sub = finetune[finetune["target"] == target]
        if not sub.empty:
            parts.append(_mean_std(sub, GROUP, "test_acc", f"finetune[{target}]"))
    table = pd.concat(parts, axis=1).reset_index()
    table.insert(0, "row_kind", "trained")
    table["seeds"] = table.pop("clean_n")

    rows = [table, *_baseline_rows(table, transfer, fisher_reference)]
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


def tradeoff_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The trade-off table's headers and rows as the text of each cell (mean ± std over
    seeds): what format_tradeoff aligns and the report's HTML table holds."""
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
    return headers, lines


def format_tradeoff(table: pd.DataFrame) -> str:
    """The trade-off table as aligned plain text (mean ± std over seeds)."""
    if table.empty:
        return "(no finished trials yet)"
    headers, lines = tradeoff_cells(table)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(out)
