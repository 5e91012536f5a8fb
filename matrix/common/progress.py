"""Progress bars for long loops (rich), quiet when stdout is not a terminal."""

from __future__ import annotations

import os

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress() -> Progress:
    # Only rank zero draws bars in multi-process runs.
    quiet = os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("MATRIX_NO_PROGRESS") == "1"
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
    )
