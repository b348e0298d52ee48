"""The trade-off table reads the tables through load_table's schema-version check."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.tables import (
    KNOWN_SCHEMA_VERSION,
    SchemaVersionError,
    format_tradeoff,
    load_table,
    tradeoff_table,
)
from tests.analysis_study import EPS, build_study, noisy

pytestmark = pytest.mark.unit

CLEAN = {0.0: 0.9, 1.0: 0.8}
PROBE = {0.0: 0.5, 1.0: 0.6}


def study(results: Path) -> Path:
    return build_study(
        results,
        eps=(0.0, 1.0),
        seeds=(0, 1, 2),
        clean=noisy(CLEAN, 0.01),
        transfer={"cifar100": noisy(PROBE, 0.01)},
        raw_pixels={"cifar100": 0.3},
    )


def trained_means(table: pd.DataFrame, column: str) -> dict[float, float]:
    rows = table[table["row_kind"] == "trained"]
    return dict(zip(rows["eps"], rows[column], strict=True))


@pytest.mark.parametrize("name", ["trials", "transfer", "robustness", "inversion"])
def test_a_part_from_a_newer_schema_makes_the_tradeoff_table_an_error(
    tmp_path: Path, name: str
) -> None:
    study(tmp_path)
    path = tmp_path / "tables" / name / "part-1.parquet"
    table = pa.table({"eval_key": ["x"]}).replace_schema_metadata(
        {"atsweep.schema_version": str(KNOWN_SCHEMA_VERSION + 1)}
    )
    pq.write_table(table, path)
    with pytest.raises(SchemaVersionError) as info:
        tradeoff_table(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert f"version {KNOWN_SCHEMA_VERSION + 1}" in message
    assert f"up to {KNOWN_SCHEMA_VERSION}" in message
    with pytest.raises(SchemaVersionError, match=r"part-1\.parquet"):
        load_table(tmp_path, name)


def test_a_part_with_a_version_that_is_not_a_number_is_an_error(tmp_path: Path) -> None:
    study(tmp_path)
    path = tmp_path / "tables" / "trials" / "part-0.parquet"
    table = pq.read_table(path).replace_schema_metadata({"atsweep.schema_version": "three"})
    pq.write_table(table, path)
    with pytest.raises(SchemaVersionError, match="is not an integer") as info:
        tradeoff_table(tmp_path)
    assert str(path) in str(info.value)


def test_parts_from_older_schemas_still_read(tmp_path: Path) -> None:
    study(tmp_path)
    current = tradeoff_table(tmp_path)
    assert trained_means(current, "clean_mean") == pytest.approx(CLEAN)
    # Schema v1 had no attack column and no proposed_by; the trade-off table reads such parts,
    # the attack as empty.
    for name in ("trials", "transfer"):
        path = tmp_path / "tables" / name / "part-0.parquet"
        table = pq.read_table(path).drop_columns(["attack"])
        pq.write_table(table.replace_schema_metadata({"atsweep.schema_version": "1"}), path)
    old = tradeoff_table(tmp_path)
    assert trained_means(old, "clean_mean") == pytest.approx(CLEAN)
    assert trained_means(old, "transfer[cifar100]_mean") == pytest.approx(PROBE)
    assert list(old["row_kind"]) == ["trained", "trained", "raw pixels"]
    assert all(pd.isna(a) or a == "" for a in old["attack"])
    assert "cifar100" in format_tradeoff(old)


def test_study_report_on_a_newer_schema_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.cli import main

    study(tmp_path)
    path = tmp_path / "tables" / "transfer" / "part-9.parquet"
    table = pa.table({"eval_key": ["x"]}).replace_schema_metadata(
        {"atsweep.schema_version": str(KNOWN_SCHEMA_VERSION + 1)}
    )
    pq.write_table(table, path)
    assert main(["report", str(tmp_path), "--no-mlflow", "--out", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert str(path) in err and "update atsweep" in err


def test_imported_networks_take_their_source_accuracy_and_the_newest_file_counts() -> None:
    """An imported network's trials row has no accuracy (nothing trained it here): it comes
    from its source-accuracy evaluation. A network whose file changed is a new trial under the
    same name; the older one and its evaluations are left out, so it never counts twice."""
    import json

    from analysis.tables import drop_superseded, fill_source_accuracy

    def trial(key: str, name: str, when: str, clean: float | None) -> dict[str, object]:
        return {
            "trial_key": key,
            "proposed_by": "imported" if name else "grid",
            "config_json": json.dumps({"name": name}),
            "completed_at": pd.Timestamp(when, tz="UTC"),
            "test_acc_clean": clean,
            "test_acc_pgd": clean,
        }

    trials = pd.DataFrame(
        [
            trial("old", "madry", "2026-01-01", None),
            trial("new", "madry", "2026-02-01", None),
            trial("other", "rb", "2026-01-15", None),
            trial("grid", "", "2026-01-10", 0.9),
        ]
    )
    source = pd.DataFrame(
        {
            "trial_key": ["old", "new", "other"],
            "test_acc_clean": [0.1, 0.2, 0.3],
            "test_acc_pgd": [0.0, 0.1, 0.2],
        }
    )
    transfer = pd.DataFrame({"trial_key": ["old", "new", None], "test_acc": [0.5, 0.6, 0.7]})
    kept = drop_superseded({"trials": trials, "source": source, "transfer": transfer})
    assert list(kept["trials"]["trial_key"]) == ["new", "other", "grid"]
    assert list(kept["transfer"]["test_acc"]) == [0.6, 0.7]  # the baseline (no trial) stays
    filled = fill_source_accuracy(kept["trials"], kept["source"]).set_index("trial_key")
    assert filled["test_acc_clean"].to_dict() == {"new": 0.2, "other": 0.3, "grid": 0.9}
    assert filled.loc["other", "test_acc_pgd"] == 0.2


def test_the_tradeoff_table_lists_the_fisher_and_inversion_references(tmp_path: Path) -> None:
    build_study(
        tmp_path,
        input_trace=noisy({0.0: 100.0, 0.25: 60.0, 0.5: 30.0, 1.0: 10.0}, 1.0),
        weight_trace=noisy({0.0: 30.0, 0.25: 20.0, 0.5: 10.0, 1.0: 5.0}, 1.0),
        fisher_random_init=(400.0, 90.0),
        inversion={
            "plain": (noisy(dict.fromkeys(EPS, 12.0), 0.1), noisy(dict.fromkeys(EPS, 0.3), 0))
        },
        mean_image=(9.5, 0.2),
        random_init={"svhn": 0.3},
    )
    table = tradeoff_table(tmp_path)
    trained = table[table["row_kind"] == "trained"].set_index("eps")
    # The random-init rows (no eps) stay out of the trained rows' means.
    assert trained["input_fisher_mean"].to_dict() == pytest.approx(
        {0.0: 100.0, 0.25: 60.0, 0.5: 30.0, 1.0: 10.0}
    )
    assert len(trained) == 4 and set(trained["seeds"]) == {3}
    reference = table[table["row_kind"] == "random init"].iloc[0]
    assert reference["input_fisher_mean"] == pytest.approx(400.0)
    assert reference["weight_fisher_mean"] == pytest.approx(90.0)
    assert reference["transfer[svhn]_mean"] == pytest.approx(0.3) and reference["seeds"] == 3
    assert set(trained["psnr[mean image]_mean"]) == {9.5}
    assert "feature_error[plain]_mean" in table.columns
    text = format_tradeoff(table)
    assert "input_fisher" in text and "psnr[mean image]" in text


def test_a_measurement_taken_again_under_other_settings_counts_once_the_latest(
    tmp_path: Path,
) -> None:
    from analysis.claims import check_claims
    from analysis.stats import load_tables
    from analysis.tables import RemeasuredWarning
    from tests.analysis_study import SEEDS, grid, write_table

    # Written first: inversions from the grey start and PGD on 100 images; then the same
    # measurements under new settings (new eval_keys), as a study recomputes them after a
    # change of its spec or of a default.
    build_study(
        tmp_path,
        seeds=SEEDS,
        inversion={
            "plain": (noisy(dict.fromkeys(EPS, 7.0), 0.1), noisy(dict.fromkeys(EPS, 0.2), 0))
        },
    )
    rising = {0.0: 12.0, 0.25: 14.0, 0.5: 16.0, 1.0: 18.0}
    later, robust = [], {"old": [], "new": []}
    for e in EPS:
        for s in SEEDS:
            g = grid(e, s)
            later.append(
                {
                    **g,
                    "eval_key": f"inv2-{g['trial_key']}",
                    "variant": "plain",
                    "psnr": noisy(rising, 0.1)(e, s),
                    "ssim": 0.5,
                }
            )
            for age, acc in (("old", 0.3), ("new", 0.6)):
                robust[age].append(
                    {
                        **g,
                        "eval_key": f"rob-{age}-{g['trial_key']}",
                        "eval_attack": "pgd20",
                        "eval_eps": 0.5,
                        "robust_acc": acc,
                    }
                )
    write_table(tmp_path, "inversion", later, part=1)
    write_table(tmp_path, "robustness", robust["old"], part=0)
    write_table(tmp_path, "robustness", robust["new"], part=1)

    with pytest.warns(RemeasuredWarning, match="12 inversion rows were measured again"):
        table = tradeoff_table(tmp_path)
    assert trained_means(table, "psnr[plain]_mean") == pytest.approx(rising)
    assert set(table.loc[table["row_kind"] == "trained", "psnr[plain]_n"]) == {3}
    assert trained_means(table, "robust[pgd20@0.5]_mean") == pytest.approx(dict.fromkeys(EPS, 0.6))
    with pytest.warns(RemeasuredWarning, match="12 robustness rows"):
        claims = check_claims(load_tables(tmp_path))
    c6 = claims[(claims["claim"] == "C6") & (claims["statistic"] == "delta_psnr")].iloc[0]
    assert c6["value"] == pytest.approx(6.0) and c6["n_seeds"] == 3


def test_a_transfer_or_fisher_measured_again_counts_once_and_each_target_stays(
    tmp_path: Path,
) -> None:
    """Probes, their references and the Fisher traces recomputed under other settings (a new
    C grid, more Fisher samples: new eval_keys): the trade-off table counts the latest of each
    network's measurement once, per target, and keeps both targets."""
    from analysis.tables import RemeasuredWarning
    from tests.analysis_study import ARCH, SEEDS, SOURCE, grid, write_table

    build_study(
        tmp_path,
        seeds=SEEDS,
        transfer={"svhn": lambda e, s: 0.2, "cifar100": noisy(dict.fromkeys(EPS, 0.4), 0.01)},
        raw_pixels={"svhn": 0.1},
        random_init={"svhn": 0.15},
        input_trace=lambda e, s: 1000.0,
        weight_trace=lambda e, s: 50.0,
        fisher_random_init=(1.0, 2.0),
    )
    transfer, fisher = [], []
    for e in EPS:
        for s in SEEDS:
            g = grid(e, s)
            row = {**g, "eval_key": f"probe2-{g['trial_key']}", "kind": "probe", "target": "svhn"}
            transfer.append({**row, "test_acc": 0.6})
            fisher.append(
                {**g, "eval_key": f"fisher2-{g['trial_key']}", "kind": "trained", "sigma": 1.0}
                | {"weight_fisher": "true", "input_trace": 10.0, "weight_trace": 5.0}
            )
    for s in SEEDS:
        ref = {"source": SOURCE, "arch": ARCH, "seed": s, "kind": "random_init"}
        transfer.append({**ref, "eval_key": f"random2-{s}", "target": "svhn", "test_acc": 0.35})
        fisher.append({**ref, "eval_key": f"fr2-{s}", "input_trace": 3.0, "weight_trace": 4.0})
    transfer.append({"eval_key": "raw2", "kind": "raw_pixels", "target": "svhn", "test_acc": 0.3})
    write_table(tmp_path, "transfer", transfer, part=1)
    write_table(tmp_path, "fisher", fisher, part=1)

    with pytest.warns(RemeasuredWarning) as caught:
        table = tradeoff_table(tmp_path)
    said = " ".join(str(w.message) for w in caught)
    assert "16 transfer rows were measured again" in said  # 12 probes, 3 references, raw pixels
    assert "15 fisher rows were measured again" in said  # 12 networks, 3 untrained ones
    trained = table[table["row_kind"] == "trained"]
    assert set(trained["transfer[svhn]_mean"]) == {0.6} and set(trained["transfer[svhn]_n"]) == {3}
    assert trained_means(table, "transfer[cifar100]_mean") == pytest.approx(dict.fromkeys(EPS, 0.4))
    assert set(trained["input_fisher_mean"]) == {10.0} and set(trained["input_fisher_n"]) == {3}
    assert set(trained["weight_fisher_mean"]) == {5.0}
    random_init = table[table["row_kind"] == "random init"].iloc[0]
    assert random_init["transfer[svhn]_mean"] == pytest.approx(0.35)
    assert random_init["input_fisher_mean"] == pytest.approx(3.0) and random_init["seeds"] == 3
    raw = table[table["row_kind"] == "raw pixels"].iloc[0]
    assert raw["transfer[svhn]_mean"] == pytest.approx(0.3)
