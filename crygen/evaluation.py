"""Metrics of generated crystals: MatterGen's ``MetricsEvaluator``, the same numbers, sooner.

The metric names, definitions and values are MatterGen's (validity, uniqueness, novelty,
energy above hull after MP2020 correction, stability within 0.1 eV/atom, S.U.N.). crygen gets
them faster without changing them: SMACT validity answers at the first valid oxidation-state
combination (``mattergen_compat.smact_validity``); each structure's validity checks run once
(MatterGen's metrics ask twice); and those checks and the pairwise structure matching behind
uniqueness and novelty (MatterGen's own ``get_unique``/``get_matches`` on the same groups) run
in parallel processes. The results are handed to MatterGen's evaluator, which computes every
metric from them.

A generated structure whose elements have no elemental entry with an energy in the reference
has no convex hull: MatterGen then drops every energy metric. crygen instead reports the energy
metrics over the structures the reference covers, says how many those are, and leaves the
energy above hull of the others empty (unknown, not zero).
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

STABILITY_THRESHOLD = 0.1  # eV/atom, MatterGen's DEFAULT_STABILITY_THRESHOLD
STRICT_STABILITY_THRESHOLD = 0.0  # eV/atom, on the hull (as LeMat-GenBench also reports)
REFERENCE_METRIC_WORDS = ("novel", "precision", "recall")
MIN_STRUCTURES_FOR_POOL = 32  # below this a process pool costs more than it saves


def structures_from_cache(cache_dir: Path) -> list[Any]:
    """Structures stored in a MatterGen dataset cache split (see ``prepare_data``)."""
    from pymatgen.core import Lattice, Structure

    pos = np.load(cache_dir / "pos.npy")
    cell = np.load(cache_dir / "cell.npy")
    z = np.load(cache_dir / "atomic_numbers.npy")
    n = np.load(cache_dir / "num_atoms.npy")
    ids = np.load(cache_dir / "structure_id.npy", allow_pickle=True)
    out, start = [], 0
    for i, k in enumerate(n):
        s = Structure(Lattice(cell[i]), z[start : start + k].tolist(), pos[start : start + k])
        s.properties["material_id"] = str(ids[i])
        out.append(s)
        start += k
    return out


def training_structures(data_dir: Path | None) -> list[Any]:
    """Every structure of a prepared dataset (train and val): they count toward novelty."""
    out: list[Any] = []
    for split in ("train", "val"):
        if data_dir is not None and (Path(data_dir) / split / "pos.npy").is_file():
            out += structures_from_cache(Path(data_dir) / split)
    return out


# --------------------------------------------------------------------------- speed-ups


@contextlib.contextmanager
def fast_smact_validity() -> Iterator[None]:
    """MatterGen's evaluator with crygen's early-exit SMACT validity, for the duration."""
    from mattergen.evaluation.metrics import structure

    from crygen.mattergen_compat import smact_validity

    original = structure.smact_validity
    structure.smact_validity = smact_validity
    try:
        yield
    finally:
        structure.smact_validity = original


# What the workers compute, set before they start: forked workers inherit it, so only indices
# and small answers cross between processes (pickling structures costs more than matching them).
_WORK: dict[str, list] = {}


def _checks_at(i: int) -> tuple[bool, bool]:
    from mattergen.evaluation.metrics import structure as metrics

    structure = _WORK["structures"][i]
    with fast_smact_validity():
        return bool(metrics.is_smact_valid(structure)), bool(metrics.structure_validity(structure))


def _unique_at(i: int) -> list[int]:
    from mattergen.evaluation.utils.dataset_matcher import get_unique
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    return get_unique(DefaultDisorderedStructureMatcher(), _WORK["unique"][i])


def _matches_at(i: int) -> dict[int, list[int]]:
    from mattergen.evaluation.utils.dataset_matcher import get_matches
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    return dict(get_matches(DefaultDisorderedStructureMatcher(), *_WORK["matches"][i]))


def _single_threaded() -> None:
    """A worker's numpy runs on one thread: the workers already fill the cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def precompute(capability: Any, workers: int) -> dict[int, tuple[bool, bool]]:
    """Per-structure validity checks, and uniqueness and novelty filled into ``capability``, with
    MatterGen's own functions on MatterGen's own groups, over ``workers`` processes.

    Returns the checks by ``id`` of the structure (see :func:`answered_checks`). Uniqueness and
    novelty are left to MatterGen's sequential path for anything but ordered structures and
    the default matcher."""
    from mattergen.evaluation.utils.dataset_matcher import (
        OrderedDatasetMatcher,
        OrderedDatasetUniquenessComputer,
        get_global_match_dict_from_local_dict,
        get_mask_from_local_index,
    )
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    structures = capability.structures
    matching = (isinstance(capability.uniqueness_computer, OrderedDatasetUniquenessComputer)
                and isinstance(capability.dataset_matcher, OrderedDatasetMatcher)
                and type(capability.structure_matcher) is DefaultDisorderedStructureMatcher)
    data = capability.dataset.entries_by_reduced_formula if matching else {}
    keys = list(data)
    lookup = capability.reference_dataset.entries_by_reduced_formula if matching else {}
    reference = {k: list(lookup[k]) for k in keys if k in lookup}  # each group read once
    _WORK.update(structures=list(structures), unique=[[e.structure for e in data[k]] for k in keys],
                 matches=[([e.structure for e in data[k]], [e.structure for e in reference[k]]) for k in reference])
    try:
        with contextlib.ExitStack() as stack:
            if workers > 1 and len(structures) >= MIN_STRUCTURES_FOR_POOL:
                pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded))
                run = lambda fn, n: list(pool.map(fn, range(n), chunksize=max(1, n // (4 * workers))))  # noqa: E731
            else:
                run = lambda fn, n: [fn(i) for i in range(n)]  # noqa: E731
            checks = run(_checks_at, len(structures))
            unique = run(_unique_at, len(keys))
            matches = run(_matches_at, len(reference))
    finally:
        _WORK.clear()
    if matching:
        local_matches: dict[str, dict] = {k: {} for k in keys}
        local_matches.update(dict(zip(reference, matches)))
        capability.__dict__["is_unique"] = get_mask_from_local_index(data, dict(zip(keys, unique)))
        capability.__dict__["matches_in_reference"] = get_global_match_dict_from_local_dict(
            data, reference, local_matches)
    return {id(s): c for s, c in zip(structures, checks)}


@contextlib.contextmanager
def answered_checks(answers: dict[int, tuple[bool, bool]]) -> Iterator[None]:
    """MatterGen's ``is_smact_valid`` and ``structure_validity`` answer precomputed structures
    from ``answers`` (MatterGen's metrics ask for each twice) and compute any other."""
    from mattergen.evaluation.metrics import structure as metrics

    originals = metrics.is_smact_valid, metrics.structure_validity
    metrics.is_smact_valid = lambda structure: (
        answers[id(structure)][0] if id(structure) in answers else originals[0](structure))
    metrics.structure_validity = lambda structure, cutoff=0.5: (
        answers[id(structure)][1] if id(structure) in answers and cutoff == 0.5 else originals[1](structure, cutoff))
    try:
        yield
    finally:
        metrics.is_smact_valid, metrics.structure_validity = originals


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # MatterGen's names and values
    additional: dict[str, Any]  # crygen's: strict stability, coverage
    table: list[dict[str, Any]]  # one row per input structure
    uncovered_systems: list[str] = field(default_factory=list)


def evaluate(
    structures: Sequence[Any],
    reference: Any,
    energies: Sequence[float] | None = None,
    original_structures: Sequence[Any] | None = None,
    workers: int | None = None,
) -> Evaluation:
    """MatterGen's metrics of ``structures`` (relaxed, with total ``energies`` in eV, or not).

    A structure with a non-finite energy is a failed relaxation: as in MatterGen it is left
    out and counted in ``n_failed_jobs``.
    """
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator
    from mattergen.evaluation.metrics.structure import StructureMetricsCapability
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    from crygen.reference import terminal_elements_with_energy

    workers = workers or min(4, os.cpu_count() or 1)
    n = len(structures)
    has_energy = energies is not None
    ok = [i for i in range(n) if not has_energy or np.isfinite(energies[i])]
    if has_energy:
        summaries = [MetricsStructureSummary.from_structure_and_energy(
            structures[i], float(energies[i]),
            original_structure=original_structures[i] if original_structures is not None else None) for i in ok]
    else:
        summaries = [MetricsStructureSummary.from_structure(structures[i]) for i in ok]
    terminals = terminal_elements_with_energy(reference) if has_energy else set()
    covered = [all(el.symbol in terminals for el in s.composition.elements) for s in structures]

    logging.getLogger("MatterGen").setLevel(logging.ERROR)  # coverage is reported below, once
    with contextlib.ExitStack() as stack:
        stack.enter_context(fast_smact_validity())
        if has_energy:
            evaluator = MetricsEvaluator.from_structure_summaries(summaries, reference=reference,
                                                                  n_failed_jobs=n - len(ok))
        else:  # structure metrics only, as MetricsEvaluator.from_structures
            evaluator = MetricsEvaluator([StructureMetricsCapability(
                structure_summaries=summaries, reference_dataset=reference,
                structure_matcher=DefaultDisorderedStructureMatcher())])
        stack.enter_context(answered_checks(precompute(evaluator.structure_capability, workers)))
        chosen = _computable(evaluator.available_metrics, reference)
        metrics = {k: _plain(v) for k, v in evaluator.compute_metrics(metrics=chosen).items()}
        per_metric = _pre_aggregation(evaluator, chosen, len(ok))

        energy_evaluator, energy_rows = None, []
        if has_energy:
            from mattergen.evaluation.metrics.energy import EnergyMetricsCapability

            if EnergyMetricsCapability in evaluator.available_capability_types:
                energy_evaluator, energy_rows = evaluator, list(range(len(ok)))
            else:  # some structures lie outside the reference: energy metrics over the rest
                energy_rows = [j for j, i in enumerate(ok) if covered[i]]
                if energy_rows:
                    energy_evaluator = MetricsEvaluator.from_structure_summaries(
                        [summaries[j] for j in energy_rows], reference=reference, n_failed_jobs=n - len(ok))
                    energy_only = [m for m in energy_evaluator.available_metrics if m not in chosen]
                    metrics.update({k: _plain(v) for k, v in energy_evaluator.compute_metrics(metrics=energy_only).items()})

    additional: dict[str, Any] = {
        "structures": n,
        "failed_relaxations": n - len(ok),
    }
    e_hull = np.full(n, np.nan)
    if has_energy:
        additional["covered_by_reference"] = int(sum(covered))
    if energy_evaluator is not None:
        for j, value in zip(energy_rows, energy_evaluator.energy_capability.energy_above_hull):
            e_hull[ok[j]] = value
        known = np.isfinite(e_hull)
        novel_unique = np.zeros(n, dtype=bool)
        if "novel_unique" in per_metric:
            novel_unique[ok] = np.asarray(per_metric["novel_unique"], dtype=bool)
        strict = known & (e_hull <= STRICT_STABILITY_THRESHOLD)
        denominator = len(energy_rows) + (n - len(ok))
        additional["energy_metrics_over"] = len(energy_rows)
        additional["frac_stable_structures_strict"] = float(strict.sum() / denominator) if denominator else None
        additional["frac_novel_unique_stable_structures_strict"] = (
            float((strict & novel_unique).sum() / denominator) if denominator else None)

    table = []
    row_of = {i: j for j, i in enumerate(ok)}
    for i, s in enumerate(structures):
        j = row_of.get(i)
        row: dict[str, Any] = {
            "index": i,
            "formula": s.composition.reduced_formula,
            "chemical_system": s.composition.chemical_system,
            "num_atoms": len(s),
        }
        for name, values in per_metric.items():
            row[name] = None if j is None else values[j]
        if has_energy:
            row["relaxation_failed"] = j is None
            row["covered_by_reference"] = covered[i]
            row["energy_per_atom"] = None if j is None else _plain(summaries[j].entry.energy_per_atom)
            row["rmsd_from_relaxation"] = None if j is None else _plain(summaries[j].rmsd_from_relaxation)
            row["energy_above_hull_per_atom"] = _plain(e_hull[i])
            row["stable"] = None if not np.isfinite(e_hull[i]) else bool(e_hull[i] <= STABILITY_THRESHOLD)
            row["stable_strict"] = None if not np.isfinite(e_hull[i]) else bool(e_hull[i] <= STRICT_STABILITY_THRESHOLD)
            row["sun"] = None if row["stable"] is None else bool(row["stable"] and row.get("novel_unique"))
        table.append(row)
    uncovered = sorted({structures[i].composition.chemical_system for i in range(n) if has_energy and not covered[i]})
    return Evaluation(metrics, additional, table, uncovered)


def _pre_aggregation(evaluator: Any, chosen: Sequence[Any], n: int) -> dict[str, list]:
    """Per-structure values behind MatterGen's structure metrics (validity, unique, novel)."""
    from mattergen.evaluation.metrics.energy import BaseEnergyMetric

    out: dict[str, list] = {}
    for metric_cls in chosen:
        if issubclass(metric_cls, BaseEnergyMetric):
            continue
        metric = evaluator._get_metric(metric_cls)
        values = getattr(metric, "pre_aggregation_values", None)
        if values is not None and len(values) == n:
            out[metric.pre_aggregation_name] = [_plain(x) for x in values]
    return out


def mattergen_metrics(structures, reference, energies=None, original_structures=None) -> dict[str, Any]:
    """MatterGen's ``MetricsEvaluator`` called as MatterGen's ``evaluate`` calls it (the yardstick)."""
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator

    if energies is None:
        evaluator = MetricsEvaluator.from_structures(list(structures), reference=reference)
    else:
        evaluator = MetricsEvaluator.from_structures_and_energies(
            list(structures), list(energies), reference=reference, original_structures=original_structures)
    chosen = _computable(evaluator.available_metrics, reference)
    return {k: _plain(v) for k, v in evaluator.compute_metrics(metrics=chosen).items()}


def _computable(metrics: Sequence[Any], reference: Any) -> list[Any]:
    """Novelty, precision and recall are undefined against an empty reference."""
    if len(reference) > 0:
        return list(metrics)
    return [m for m in metrics if not any(w in m.name for w in REFERENCE_METRIC_WORDS)]


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
