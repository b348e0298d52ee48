"""Analysis of a study from its parquet tables alone (no torch, Ray or MLflow)."""

from analysis.claims import CLAIMS, check_claims, format_claims
from analysis.figures import (
    plot_fisher,
    plot_inversion,
    plot_reconstructions,
    plot_source_accuracy,
    plot_tradeoff,
    plot_transfer,
    plot_trial_curves,
    write_figures,
)
from analysis.report import Report, read_study_info, write_report
from analysis.search import (
    hypervolume,
    objective_points,
    pareto_front,
    plot_search_vs_grid,
    search_summary,
)
from analysis.stats import (
    COLUMNS_READ,
    KNOWN_SCHEMA_VERSION,
    SchemaVersionError,
    aggregate_seeds,
    join_trials,
    load_tables,
    mean_ci,
    t_quantile,
    welch_diff_ci,
)
from analysis.tables import (
    DuplicateRowsWarning,
    RemeasuredWarning,
    TableChangingError,
    format_tradeoff,
    load_table,
    tradeoff_table,
)

__all__ = [
    "CLAIMS",
    "COLUMNS_READ",
    "KNOWN_SCHEMA_VERSION",
    "DuplicateRowsWarning",
    "RemeasuredWarning",
    "Report",
    "SchemaVersionError",
    "TableChangingError",
    "aggregate_seeds",
    "check_claims",
    "format_claims",
    "format_tradeoff",
    "hypervolume",
    "join_trials",
    "load_table",
    "load_tables",
    "mean_ci",
    "objective_points",
    "pareto_front",
    "plot_fisher",
    "plot_inversion",
    "plot_reconstructions",
    "plot_search_vs_grid",
    "plot_source_accuracy",
    "plot_tradeoff",
    "plot_transfer",
    "plot_trial_curves",
    "read_study_info",
    "search_summary",
    "t_quantile",
    "tradeoff_table",
    "welch_diff_ci",
    "write_figures",
    "write_report",
]
