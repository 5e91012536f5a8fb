"""Evaluation suite: benchmark data, judges, statistics and the evaluate stage."""
