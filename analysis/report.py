"""A study's report from its tables: one self-contained HTML page and markdown tables.

The page embeds every figure (PNG as data URIs, so it can be mailed or archived as one file), the
trade-off table, the claim checks C1-C6 with their verdicts, the study's spec and the software
that produced the results (both from RESULTS/study.json, written by `study run`) and that drew
the report. The markdown holds the same tables for a paper draft or a pull request.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import yaml

from analysis.claims import CLAIMS, check_claims, format_claims
from analysis.figures import write_figures
from analysis.search import objective_points, pareto_front
from analysis.stats import load_tables
from analysis.tables import _filesystem, tradeoff_cells, tradeoff_table

STUDY_INFO = "study.json"
# scipy computes the confidence intervals and rank correlations of the claim checks.
REPORT_PACKAGES = ("pandas", "pyarrow", "numpy", "scipy", "matplotlib")
CLAIM_COLUMNS = [
    *("claim", "source", "arch", "norm", "attack", "target", "setting", "statistic", "value"),
    *("ci_low", "ci_high", "at_eps", "n_seeds", "n_eps", "verdict", "reference"),
    *("versus_reference", "seeds_needed", "note"),
]


@dataclass(frozen=True)
class Report:
    """What write_report wrote."""

    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)


def read_study_info(results_dir: str | Path) -> dict[str, Any]:
    """RESULTS/study.json (name, spec, software versions of the run), or {} when absent."""
    fs, root = _filesystem(str(results_dir))
    path = f"{root}/{STUDY_INFO}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return {}
    with fs.open_input_stream(path) as fh:
        return dict(json.loads(fh.read().decode()))


def software_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python and the installed version of each package ("not installed" where absent)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(empty)\n"
    cells = df.astype(object).where(df.notna(), "").astype(str)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |"]
    lines.append("|" + "|".join("---" for _ in df.columns) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame, css_class: str) -> str:
    if df.empty:
        return "<p>(empty)</p>"
    return df.to_html(
        index=False, classes=css_class, na_rep="", border=0, float_format="{:.4g}".format
    )


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    name = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure id="fig-{html.escape(path.stem)}"><img alt="{name}" '
        f'src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'
    )


def search_section(tables: dict[str, pd.DataFrame], info: dict[str, Any]) -> pd.DataFrame | None:
    """For a search study: its Pareto front (the trials no other beats on every objective),
    or None for a grid."""
    search = (info.get("spec") or {}).get("search")
    if not search:
        return None
    names = [o["metric"] for o in search["objectives"]]
    maximize = [o.get("direction", "maximize") == "maximize" for o in search["objectives"]]
    points = objective_points(tables, names).dropna(subset=names)
    if points.empty:
        return points
    front = points.iloc[pareto_front(points[names].to_numpy(float), maximize)]
    return front[["trial_key", "eps", "seed", "proposed_by", *names]]


def _claims_html(claims: pd.DataFrame) -> str:
    if claims.empty:
        return '<p id="claims">No claim can be checked: the study has no finished trials yet.</p>'
    heads = claims[claims["headline"].astype(bool)]
    shown = heads[CLAIM_COLUMNS]
    legend = "".join(
        f"<li><b>{html.escape(c)}</b> {html.escape(text)}</li>" for c, text in CLAIMS.items()
    )
    table = _html_table(shown, "claims")
    return f'<ul>{legend}</ul><div id="claims" class="scroll">{table}</div>'


def _tradeoff_html(tradeoff: pd.DataFrame) -> str:
    """The trade-off table as an HTML table (the text of format_tradeoff's cells), in a box
    that scrolls sideways when it is wider than the page."""
    if tradeoff.empty:
        return '<div id="tradeoff"><p>(no finished trials yet)</p></div>'
    headers, rows = tradeoff_cells(tradeoff)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    table = f'<table class="tradeoff"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div id="tradeoff" class="scroll">{table}</div>'


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td:last-child { min-width: 18em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; width: 820px; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }
.scroll { overflow-x: auto; max-width: 100%; }
table.tradeoff td, table.tradeoff th { white-space: nowrap; }
table.tradeoff td:last-child { min-width: 0; }
"""


@dataclass(frozen=True)
class _Content:
    """What the report shows, read once, for its markdown and its HTML page."""

    name: str
    results_dir: str
    generated: str
    counts: dict[str, int]
    tradeoff: pd.DataFrame
    claims: pd.DataFrame
    front: pd.DataFrame | None
    info: dict[str, Any]

    def rows_line(self, escape: Callable[[str], str] = str) -> str:
        return ", ".join(f"{escape(t)} {n}" for t, n in self.counts.items())

    def provenance(self) -> pd.DataFrame:
        """Where the run came from (study.json's provenance: commit, host, GPU, CUDA)."""
        items = (self.info.get("provenance") or {}).items()
        return pd.DataFrame(
            [{"provenance": k, "run": str(v)} for k, v in items], columns=["provenance", "run"]
        )

    def versions(self) -> pd.DataFrame:
        """The software of the run (study.json) beside the report's."""
        run = self.info.get("versions", {})
        report = software_versions(REPORT_PACKAGES)
        return pd.DataFrame(
            [
                {"package": k, "run": run.get(k, ""), "report": report.get(k, "")}
                for k in dict.fromkeys([*run, *report])
            ]
        )


def _report_markdown(c: _Content) -> str:
    markdown = [
        f"# Study {c.name}",
        "",
        f"Results: `{c.results_dir}`. Generated {c.generated}. Rows: {c.rows_line()}.",
        "",
        "## Trade-off table (mean ± std over seeds)",
        "",
        _markdown_table(c.tradeoff),
        "## Claim checks",
        "",
        format_claims(c.claims),
    ]
    if c.front is not None:
        markdown += ["## Search: Pareto front", "", _markdown_table(c.front)]
    provenance = c.provenance()
    if not provenance.empty:
        markdown += ["## Provenance", "", _markdown_table(provenance)]
    return "\n".join(markdown)


def _report_html(c: _Content, pngs: list[Path]) -> str:
    spec_text = yaml.safe_dump(c.info["spec"], sort_keys=False) if "spec" in c.info else "(unknown)"
    front = []
    if c.front is not None:
        front = [
            "<h2>Search: Pareto front</h2><p>The trials no other trial beats on every "
            "objective of the search.</p>",
            f'<div id="front">{_html_table(c.front, "front")}</div>',
        ]
    provenance = c.provenance()
    body = [
        f"<h1>Study {html.escape(c.name)}</h1>",
        f"<p>Results: <code>{html.escape(c.results_dir)}</code>. Generated "
        f"{html.escape(c.generated)}. Rows: {c.rows_line(html.escape)}.</p>",
        "<h2>Trade-off table</h2><p>Mean ± standard deviation over seeds.</p>",
        _tradeoff_html(c.tradeoff),
        "<h2>Claim checks</h2><p>Headline rows; every row is in report.md and claims.csv. "
        "Verdicts use 95% confidence intervals across seeds (analysis/claims.py states the "
        "rules).</p>",
        _claims_html(c.claims),
        *front,
        "<h2>Figures</h2>",
        *(_figure_html(p) for p in pngs),
        "" if pngs else "<p>No figure: the tables are empty.</p>",
        "<h2>Spec</h2>",
        f"<pre>{html.escape(spec_text)}</pre>",
        "<h2>Software</h2>",
        "" if provenance.empty else _html_table(provenance, "provenance"),
        _html_table(c.versions(), "versions"),
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Study {html.escape(c.name)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_report(results_dir: str | Path, out_dir: str | Path) -> Report:
    """Write OUT/report.html, OUT/report.md and OUT/figures/ for a study's results folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = load_tables(results_dir)
    figures = write_figures(tables, out / "figures")
    info = read_study_info(results_dir)
    content = _Content(
        name=str(info.get("name") or Path(str(results_dir)).name),
        results_dir=str(results_dir),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        counts={t: len(df) for t, df in tables.items()},
        tradeoff=tradeoff_table(results_dir),
        claims=check_claims(tables),
        front=search_section(tables, info),
        info=info,
    )
    md_path = out / "report.md"
    md_path.write_text(_report_markdown(content))
    content.tradeoff.to_csv(out / "tradeoff.csv", index=False)
    content.claims.to_csv(out / "claims.csv", index=False)
    html_path = out / "report.html"
    html_path.write_text(_report_html(content, [p for p in figures if p.suffix == ".png"]))
    return Report(html_path, md_path, figures, content.claims)
