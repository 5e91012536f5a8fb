"""The comparison report a multirun writes when its last job ends.

`CompareOnMultirunEnd` is the Hydra callback conf/pipeline.yaml names
(`hydra.callbacks.compare`), so every entry point's sweep gets it. Each finished job has
listed its run dir in the sweep dir's arms file (matrix.core.sweep.record_arm); this reads
them all and writes the side-by-side report (matrix.analysis.compare) into the sweep dir.
It lives in the analysis layer because it reads finished runs; core only records the arms.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from matrix.core.sweep import ARMS_FILE

log = logging.getLogger("matrix.sweep")


class CompareOnMultirunEnd(Callback):
    """After the last job of a multirun: the comparison report, into the sweep dir."""

    def __init__(self, enabled: bool = True, lineage_answers: int = 3) -> None:
        self.enabled = enabled
        self.lineage_answers = lineage_answers

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not self.enabled or not (sweep / ARMS_FILE).exists():
            return
        from matrix.analysis.compare import compare
        from matrix.llm.embeddings import Encoder

        encoder = Encoder(config.embedding.model, cache_dir=config.paths.cache_dir)
        try:
            compare([sweep], sweep, lineage_answers=self.lineage_answers, encoder=encoder)
        except Exception:
            # The arms' results are on disk either way; a failed report must not fail the sweep.
            log.exception("compare failed; rerun: python -m matrix.compare %s", sweep)
