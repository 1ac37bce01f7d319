"""A pipeline run folder's layout (``OUT/...``), declared once.

The Makefile names these paths in its rules (as ``$(OUT)/<path>``: make needs them as text when
it reads the rules); the library finds a run's parts through :class:`RunFolder`.
``tests/test_layout.py`` checks that the two agree: every ``$(OUT)/...`` path in the Makefile lies
in a part declared here, and every part declared here is one the Makefile writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUN_PARTS = {
    "data": "data",  # prepare_data: MatterGen's dataset cache of the user's crystals
    "finetune": "finetune",  # the fine-tuned model dir
    "validation": "evaluation/metrics.json",  # validate: base vs fine-tuned
    "model_for_generation": "generation/model_for_generation",
    "blocks": "generation/blocks",  # generate's finished blocks (resumed from, merged)
    "results": "generation/results",  # generate and evaluate_generated
    "settings": "settings.json",
    "summary": "summary.json",
    "report": "report",  # make report: index.html, cif/
    "timings": "timings",  # each stage's wall time and peak memory
    "stamps": ".stamps",  # the settings each stage ran with
    "reference_build": "reference-build",  # make reference's parts
    "base_train": "base-train",  # make base-model's scratch
}


@dataclass(frozen=True)
class RunFolder:
    """The run folder at ``root``: ``RunFolder(out).part("results")`` is ``out/generation/results``."""

    root: Path

    def part(self, name: str) -> Path:
        return Path(self.root) / RUN_PARTS[name]
