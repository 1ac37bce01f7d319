"""A run's report: one self-contained HTML page, ``OUT/report/index.html``, from the run's files alone.

It reads what the pipeline wrote (``summary.json``, the generation results, the prepared training
crystals) through :class:`RunFiles`; it loads no model and recomputes no metric. Space groups,
which no stage records, are read off the structures with spglib (symprec 0.1 Å, as for display).

Figures are matplotlib SVG written into the page (matplotlib 3.8.4, pinned in
requirements-remote.txt): static figures open from ``file://`` with no network and no script,
and print as they show. The per-structure table is sorted and filtered by a few lines of inline
script. Each structure's CIF (relaxed where relaxed) is written beside the page in ``cif/`` and
linked. The folder appears only when complete (:func:`crygen.fileio.atomic_path`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crygen.fileio import CrygenError, atomic_path, read_json
from crygen.layout import RunFolder

SYMPREC = 0.1  # Å, spglib's tolerance for the space groups shown


@dataclass
class RunFiles:
    """What a report reads from a run folder."""

    root: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]  # per_structure.csv, typed
    structures: list[Any]  # pymatgen, relaxed where relaxed, in the rows' order (no rows: not evaluated)
    relaxed: bool
    generation: dict[str, Any]  # generation.json
    training_structures: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (cell, frac, numbers)

    @classmethod
    def read(cls, root: Path) -> "RunFiles":
        run = RunFolder(root)
        summary_path = run.part("summary")
        if not summary_path.is_file():
            raise CrygenError(summary_path, "no summary.json: run `make pipeline` (or `make summary`) first")
        summary = read_json(summary_path)
        from crygen.structures import read_structures

        results = run.part("results")
        table = results / "per_structure.csv"
        # an evaluation that failed (summary.json says why) leaves the generated crystals unevaluated
        rows = [_typed(r) for r in csv.DictReader(table.open())] if table.is_file() else []
        relaxed = bool(rows) and (results / "relaxed_structures.extxyz").is_file()
        source = results / ("relaxed_structures.extxyz" if relaxed else "generated_crystals.extxyz")
        structures = read_structures(source) if source.is_file() else []
        if rows and len(structures) != len(rows):
            raise CrygenError(table, f"{len(rows)} rows for {len(structures)} structures in {source.name}")
        generation = read_json(results / "generation.json") if (results / "generation.json").is_file() else {}
        return cls(root, summary, rows, structures, relaxed, generation, _training(run.part("data") / "train"))


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row with booleans, integers and floats as such; empty cells None."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v == "":
            out[k] = None
        elif v in ("True", "False"):
            out[k] = v == "True"
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    number = float(v)
                    out[k] = number if math.isfinite(number) else None
                except ValueError:
                    out[k] = v
    return out


def _training(folder: Path) -> list[tuple[Any, Any, Any]]:
    """The prepared training crystals (MatterGen's dataset cache: fractional positions) as
    ``(cell, frac_coords, atomic_numbers)``; none when the folder is not there."""
    import numpy as np

    if not (folder / "num_atoms.npy").is_file():
        return []
    counts = np.load(folder / "num_atoms.npy")
    cells, pos, numbers = (np.load(folder / f"{name}.npy") for name in ("cell", "pos", "atomic_numbers"))
    ends = np.cumsum(counts)
    return [(cells[i], pos[e - n:e], numbers[e - n:e]) for i, (n, e) in enumerate(zip(counts, ends))]


def space_group(cell: Any, frac: Any, numbers: Any) -> str:
    """The international symbol and number (``Fm-3m (225)``), or ``?`` when spglib finds none."""
    import spglib

    found = spglib.get_spacegroup((cell, frac, numbers), symprec=SYMPREC)
    return found.replace(" ", "\u2009") if found else "?"


def cell_text(value: Any, missing: str = "", float_format: str = "{:.4g}") -> str:
    """A value as the report's pages and tables show it: booleans as yes/no, floats formatted,
    ``missing`` for None."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` into ``out`` (default ``run_dir/report``); its index.html."""
    from crygen.report.page import render

    run = RunFiles.read(run_dir)
    out = out or RunFolder(run_dir).part("report")
    with atomic_path(out) as folder:
        (folder / "cif").mkdir(parents=True)
        cif_names = _write_cifs(run, folder / "cif")
        (folder / "index.html").write_text(render(run, cif_names), encoding="utf-8")
    return out / "index.html"


def _write_cifs(run: RunFiles, folder: Path) -> list[str]:
    """One CIF per structure, named after its row; the file names, relative to the page."""
    from pymatgen.io.cif import CifWriter

    names = []
    for i, structure in enumerate(run.structures):
        label = run.rows[i].get("name") if run.rows else None
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(label or f"structure-{i}"))
        name = f"{stem.removesuffix('.cif')}.cif"
        (folder / name).write_text(str(CifWriter(structure)))
        names.append(f"cif/{name}")
    return names
