"""MATRIX: multi-agent simulation turned into post-training data (arXiv 2410.14251)."""

__version__ = "0.1.0"
