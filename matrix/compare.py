"""Compare finished runs: python -m matrix.compare <run dirs | sweep dir> [--out DIR].

The comparison report is built by matrix.analysis.compare.
"""

from matrix.analysis.compare import main

if __name__ == "__main__":
    main()
