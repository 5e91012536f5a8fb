"""Reading finished runs: the arms of an experiment (`arms`), their comparison report
(`compare`) with its plots (`plots`), the lineage from answers back to training rows
(`lineage`), and the report a sweep writes when its last job ends (`sweep_report`); the
paper's analyses of generated data (`data_analysis`, `python -m matrix.analyze`), which also
ask the judge role to tag instructions. Never writes into a stage's outputs."""
