"""crygen/layout.py and the Makefile name the same run-folder parts."""

from __future__ import annotations

import re
from pathlib import Path

from crygen.layout import RUN_PARTS, RunFolder

PROJECT = Path(__file__).resolve().parents[1]
MAKE_PATH = re.compile(r"\$\((?:OUT|abspath \$\(OUT\)\))\)?/([A-Za-z0-9_./-]+)")


def _makefile_run_paths() -> set[str]:
    text = "".join((PROJECT / f).read_text() for f in ("Makefile", "docker/docker.mk"))
    return {m.rstrip("/") for m in MAKE_PATH.findall(text)}


def _part_of(path: str) -> str | None:
    return next((name for name, rel in RUN_PARTS.items() if path == rel or path.startswith(rel + "/")), None)


def test_every_run_path_the_makefile_names_is_a_declared_part():
    paths = _makefile_run_paths()
    assert "generation/results/metrics_summary.json" in paths and "timings" in paths  # the pattern reads both forms
    assert {p: _part_of(p) for p in paths if _part_of(p) is None} == {}


def test_every_declared_part_is_one_the_makefile_writes():
    parts = {_part_of(p) for p in _makefile_run_paths()}
    assert set(RUN_PARTS) - parts == set()


def test_a_run_folder_finds_its_parts(tmp_path):
    run = RunFolder(tmp_path)
    assert run.part("results") == tmp_path / "generation" / "results"
    assert run.part("validation").name == "metrics.json"
