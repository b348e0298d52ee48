"""Analysis of a study from its parquet tables alone (no torch, Ray or MLflow)."""

from analysis.tables import format_tradeoff, load_table, tradeoff_table

__all__ = ["format_tradeoff", "load_table", "tradeoff_table"]
