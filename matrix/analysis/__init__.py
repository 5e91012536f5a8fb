"""Reading finished runs: the arms of an experiment (`arms`), their comparison report
(`compare`) with its plots (`plots`), and the lineage from answers back to training rows
(`lineage`). Reads files only, never models."""
