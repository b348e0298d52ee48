"""`study report` on a real study: HTML and markdown written, logged to MLflow, and the page
opened in a real headless Chromium (every figure loads, the claim table is there)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest

from tests.browser import evaluate_page, find_chromium
from tests.conftest import ROOT, run_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(smoke, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    _, results, first = smoke
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path_factory.mktemp("report")
    done = run_study("report", str(results), "--out", str(out), cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in done.stdout
    return results, out


def test_study_run_wrote_the_report_and_printed_its_path(smoke) -> None:  # type: ignore[no-untyped-def]
    _, results, first = smoke
    assert f"report: {results / 'report' / 'report.html'}" in first.stdout
    assert (results / "report" / "report.md").is_file()


def test_the_report_has_figures_tables_claims_spec_and_versions(report) -> None:  # type: ignore[no-untyped-def]
    results, out = report
    page = (out / "report.html").read_text()
    pngs = sorted((out / "figures").glob("*.png"))
    assert {p.stem for p in pngs} >= {"source_accuracy", "transfer", "tradeoff", "fisher"}
    assert all((out / "figures" / f"{p.stem}.svg").is_file() for p in pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)  # self-contained
    assert 'id="claims"' in page and "C2" in page and "name: smoke" in page
    assert "torch" in page and "pyarrow" in page  # the run's and the report's software
    # Where the run came from: study.json's commit, host and GPU, on the page and in markdown.
    provenance = json.loads((results / "study.json").read_text())["provenance"]
    assert 'class="dataframe provenance"' in page
    markdown = (out / "report.md").read_text()
    for key in ("git_commit", "host", "gpu", "cuda"):
        cells = rf"<td>{key}</td>\s*<td>{re.escape(str(provenance[key]))}</td>"
        assert re.search(cells, page), key
        assert f"| {key} | {provenance[key]} |" in markdown, key
    assert "## Claim checks" in markdown and "### C1" in markdown and "| source |" in markdown


def test_the_report_is_logged_to_the_study_and_trial_runs(report) -> None:  # type: ignore[no-untyped-def]
    results, _ = report
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["smoke"])
    parent = runs[runs["tags.atsweep.role"] == "study"]["run_id"].item()
    logged = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged
    for run_id in runs[runs["tags.atsweep.role"] == "trial"]["run_id"]:
        assert [f.path for f in client.list_artifacts(run_id, "figures")], run_id


@pytest.mark.skipif(find_chromium() is None, reason="needs chromium (.ci/run installs it)")
def test_the_demos_report_opens_in_headless_chromium(demo) -> None:  # type: ignore[no-untyped-def]
    _, results, run = demo
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    html = results / "report" / "report.html"
    assert run.stdout.rstrip().endswith(f"report: {html}")  # what `make demo` ends with
    figures = results / "report" / "figures"
    assert {p.stem for p in figures.glob("*.png")} >= {
        *("source_accuracy", "transfer", "tradeoff", "fisher", "inversion"),
    }
    shot = ROOT / "test-artifacts" / "report-demo.png"
    widths, heights, has_claims, claim_rows, title, tradeoff, boxes, page = evaluate_page(
        html,
        [
            "Array.from(document.images).map(i => i.naturalWidth)",
            "Array.from(document.images).map(i => i.naturalHeight)",
            "!!document.querySelector('#claims table')",
            "document.querySelectorAll('#claims table tr').length",
            "document.title",
            "Array.from(document.querySelectorAll('#tradeoff table tr'))"
            ".map(r => Array.from(r.cells).map(c => c.textContent))",
            # Each wide table scrolls inside its own box ...
            "['#tradeoff', '#claims'].map(s => [getComputedStyle(document.querySelector(s))"
            ".overflowX, document.querySelector(s).scrollWidth,"
            " document.querySelector(s).clientWidth])",
            # ... so the page itself is never wider than the window (1280 px).
            "[document.documentElement.scrollWidth, window.innerWidth]",
        ],
        screenshot=shot,
    )
    assert len(widths) == len(list(figures.glob("*.png"))) >= 5
    assert all(w > 0 for w in widths) and all(h > 0 for h in heights), (widths, heights)
    assert has_claims and claim_rows > 1 and title == "Study demo"
    # The trade-off table is an HTML table: a header and a row per line of the text table
    # that `study run` printed, with the same cells.
    text = run.stdout
    assert tradeoff[0][:5] == ["source", "arch", "norm", "attack", "eps"]
    assert tradeoff[0][-1] == "seeds" and len(tradeoff) == 1 + 4 + 2  # 4 eps, 2 baselines
    assert all(len(row) == len(tradeoff[0]) for row in tradeoff)
    assert all(cell in text for row in tradeoff[1:] for cell in row[5:] if cell)
    for overflow, scroll_width, client_width in boxes:
        assert overflow == "auto" and scroll_width >= client_width
    assert boxes[0][1] > boxes[0][2], "the demo's trade-off table is wider than the page"
    assert page[0] <= page[1], page
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_running_the_demo_again_reuses_everything_and_its_report(demo) -> None:  # type: ignore[no-untyped-def]
    path, results, first = demo
    assert first.returncode == 0
    html = results / "report" / "report.html"
    written = html.stat().st_mtime_ns
    again = run_study("run", str(path), cwd=path.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trials 0 run, 12 cached" in again.stdout and "evaluations 0 run" in again.stdout
    assert "report unchanged" in again.stdout and html.stat().st_mtime_ns == written
    # `study report` rewrites it on request.
    rewritten = run_study("report", str(results), "--no-mlflow", cwd=path.parent)
    assert rewritten.returncode == 0 and html.stat().st_mtime_ns > written


def test_the_demos_numbers_stand_beside_their_references(demo) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    import pandas as pd

    _, results, run = demo
    assert run.returncode == 0
    report = results / "report"
    tradeoff = pd.read_csv(report / "tradeoff.csv")
    trained = tradeoff[tradeoff["row_kind"] == "trained"]
    assert len(trained) == 4 and set(trained["seeds"]) == {3}
    # AutoAttack beside PGD (torchattacks is installed by `make install`), each column named:
    # at 0.5 on seed 0's networks, as the demo keeps it.
    if importlib.util.find_spec("torchattacks") is not None:
        assert trained["robust[autoattack@0.5]_mean"].between(0, 1).all()
        assert trained["robust[autoattack@0.5]_n"].eq(1).all()
        assert "robust[autoattack@1]_mean" not in tradeoff.columns
        assert trained["robust[pgd20@1]_mean"].notna().all()
    # The Fisher of the untrained network, and the inversion's no-information line.
    untrained = tradeoff[tradeoff["row_kind"] == "random init"].iloc[0]
    assert untrained["input_fisher_mean"] > 0 and untrained["weight_fisher_mean"] > 0
    assert trained["psnr[mean image]_mean"].notna().all()
    # The plain reconstructions of the most robust networks beat the no-information line.
    robust = trained.loc[trained["eps"].astype(float).idxmax()]
    assert robust["psnr[plain]_mean"] > robust["psnr[mean image]_mean"] + 2
    inversion = pd.read_parquet(results / "tables" / "inversion")
    assert inversion["converged"].all(), inversion[["eps", "variant", "final_improvement"]]
    claims = pd.read_csv(report / "claims.csv")
    c2 = claims[(claims["claim"] == "C2") & claims["headline"]]
    assert c2["reference"].str.contains("raw pixels").all()
    assert c2["versus_reference"].str.contains("raw pixels").all()
    for claim in ("C4", "C5"):
        rows = claims[claims["claim"] == claim]
        assert rows["statistic"].str.startswith("ratio_").all()
        assert rows["reference"].str.startswith("random init").all()
    c6 = claims[(claims["claim"] == "C6") & claims["headline"]]
    assert c6["reference"].str.contains("mean image").all()
    page = (report / "report.html").read_text()
    assert "seeds_needed" in page and "versus_reference" in page
