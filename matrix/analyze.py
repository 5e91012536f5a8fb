"""Analyse generate runs as the paper does (Figs. 5-7): python -m matrix.analyze <runs> [--out DIR].

The analyses and the report are built by matrix.analysis.data_analysis.
"""

from matrix.analysis.analyze_cli import main

if __name__ == "__main__":
    main()
