"""MatterGen's metrics of generated crystals, and what crygen reports beside them.

:func:`evaluate` computes MatterGen's metric names and values with MatterGen's
``MetricsEvaluator`` (the matching and validity checks sped up by
:mod:`crygen.evaluation.matching` and :mod:`crygen.evaluation.mattergen_hooks`), and crygen's
additional metrics and one table row per structure.

A generated structure whose elements have no elemental entry with an energy in the reference
has no convex hull: MatterGen then drops every energy metric. crygen instead reports the energy
metrics over the structures the reference covers, says how many those are, and leaves the
energy above hull of the others empty (unknown, not zero).

A hull is only as good as the compounds in it: a structure whose system and subsystems hold no
reference compound is compared with its elements alone, and almost any compound lies below
that. Each row says what its hull stands on, ``additional["hull_support"]`` counts the verdicts
that rest on elements only, and when most do, :func:`reported` withholds the stability metrics
from the plain numbers (they stay in ``Evaluation.metrics``, MatterGen's values, and go to the
output under ``withheld_metrics`` with the reason).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from crygen.evaluation.matching import reduced_form_store_path
from crygen.evaluation.mattergen_hooks import answer_is_ordered, answered_checks, fast_smact_validity, precompute

STABILITY_THRESHOLD = 0.1  # eV/atom, MatterGen's DEFAULT_STABILITY_THRESHOLD
STRICT_STABILITY_THRESHOLD = 0.0  # eV/atom, on the hull (as LeMat-GenBench also reports)
REFERENCE_METRIC_WORDS = ("novel", "precision", "recall")
# Metrics that read a structure's place on its hull: withheld when most hulls hold no compound.
HULL_METRIC_WORDS = ("hull", "stable")
# Withheld when more than this fraction of the stability verdicts rest on elements only.
ELEMENTS_ONLY_MAJORITY = 0.5


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
    energy_correction: str = "MP2020",
) -> Evaluation:
    """MatterGen's metrics of ``structures`` (relaxed, with total ``energies`` in eV, or not).

    ``reference``: a :class:`crygen.reference.Reference` (its dataset with any training set,
    its ordering answered by it) or a MatterGen ``ReferenceDataset``.
    ``energy_correction``: what the potential's energies need on the hull
    (``crygen.relaxation.energy_correction``), passed to MatterGen as its
    ``energy_correction_scheme``. A structure with a non-finite energy is a failed relaxation:
    as in MatterGen it is left out and counted in ``n_failed_jobs``.
    """
    from crygen.evaluation.matching_ahead import MatchingAhead

    dataset = _mattergen_dataset(reference)
    ordered = _is_ordered(reference, dataset)
    # matched by a child while MatterGen's evaluator is imported (None where that cannot help)
    ahead = MatchingAhead.start(structures, dataset, reduced_form_store_path()) if energies is None and ordered else None
    try:
        return _evaluate(structures, dataset, ordered, energies, original_structures, energy_correction, ahead)
    finally:
        if ahead is not None:
            ahead.close()


def _evaluate(structures: Sequence[Any], dataset: Any, ordered: bool, energies: Sequence[float] | None,
              original_structures: Sequence[Any] | None, energy_correction: str, ahead: Any) -> Evaluation:
    # imported before anything warns: their import resets the record of warnings already shown
    import mattergen.evaluation.metrics.evaluator  # noqa: F401
    import mattergen.evaluation.metrics.structure  # noqa: F401
    from threadpoolctl import threadpool_limits

    from crygen.reference import terminal_elements_with_energy

    n = len(structures)
    has_energy = energies is not None
    ok = [i for i in range(n) if not has_energy or np.isfinite(energies[i])]
    summaries = _summaries(structures, ok, energies, original_structures, energy_correction)
    terminals = terminal_elements_with_energy(dataset) if has_energy else set()
    covered = [all(el.symbol in terminals for el in s.composition.elements) for s in structures]

    logging.getLogger("MatterGen").setLevel(logging.ERROR)  # coverage is reported below, once
    answer_is_ordered(dataset, ordered)
    with contextlib.ExitStack() as stack:
        # Structure matching inverts tens of thousands of 3x3 matrices: a multi-threaded BLAS
        # spends more waking its threads than computing (several times more on a busy machine).
        stack.enter_context(threadpool_limits(limits=1))
        stack.enter_context(fast_smact_validity())
        evaluator = _evaluator(summaries, dataset, has_energy, n - len(ok))
        stack.enter_context(answered_checks(precompute(evaluator.structure_capability, reduced_form_store_path(), ahead)))
        chosen = _computable(evaluator.available_metrics, dataset)
        metrics = {k: _plain(v) for k, v in evaluator.compute_metrics(metrics=chosen).items()}
        per_metric = _pre_aggregation(evaluator, chosen, len(ok))
        energy_evaluator, energy_rows = (
            _energy_evaluator(evaluator, summaries, dataset, ok, covered, n, chosen, metrics) if has_energy
            else (None, []))

    additional: dict[str, Any] = {"structures": n, "failed_relaxations": n - len(ok)}
    e_hull = np.full(n, np.nan)
    if has_energy:
        additional["covered_by_reference"] = int(sum(covered))
    if energy_evaluator is not None:
        additional.update(_strict_stability(energy_evaluator, energy_rows, ok, n, per_metric, e_hull))
    support: list[dict[str, int] | None] = [None] * n
    if has_energy:
        support = _hull_supports(dataset, structures)
        additional["hull_support"] = _hull_support_counts(support, e_hull)
    table = _table(structures, ok, per_metric, summaries if has_energy else None, covered, support, e_hull)
    uncovered = sorted({structures[i].composition.chemical_system for i in range(n) if has_energy and not covered[i]})
    return Evaluation(metrics, additional, table, uncovered)


def _mattergen_dataset(reference: Any) -> Any:
    """The MatterGen ``ReferenceDataset`` that ``reference`` stands for."""
    from crygen.reference import Reference

    return reference.matching_dataset if isinstance(reference, Reference) else reference


def _is_ordered(reference: Any, dataset: Any) -> bool:
    """Whether every reference entry is ordered: a :class:`~crygen.reference.Reference` answers
    it (once), a plain dataset is asked as :func:`crygen.reference.all_ordered` asks it."""
    from crygen.reference import Reference, all_ordered

    return reference.is_ordered if isinstance(reference, Reference) else all_ordered(dataset)


def _summaries(structures: Sequence[Any], ok: list[int], energies: Sequence[float] | None,
               original_structures: Sequence[Any] | None, energy_correction: str) -> list[Any]:
    """MatterGen's structure summaries of the structures ``ok`` (relaxed ones with their energies)."""
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary

    from crygen.relaxation import correction_scheme

    if energies is None:
        return [MetricsStructureSummary.from_structure(structures[i]) for i in ok]
    scheme = correction_scheme(energy_correction)
    return [MetricsStructureSummary.from_structure_and_energy(
        structures[i], float(energies[i]),
        original_structure=original_structures[i] if original_structures is not None else None,
        energy_correction_scheme=scheme) for i in ok]


def _evaluator(summaries: list[Any], reference: Any, has_energy: bool, n_failed: int) -> Any:
    """MatterGen's ``MetricsEvaluator`` of ``summaries``: every capability with energies, the
    structure metrics only without (as ``MetricsEvaluator.from_structures``)."""
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator
    from mattergen.evaluation.metrics.structure import StructureMetricsCapability
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    if has_energy:
        return MetricsEvaluator.from_structure_summaries(summaries, reference=reference, n_failed_jobs=n_failed)
    return MetricsEvaluator([StructureMetricsCapability(
        structure_summaries=summaries, reference_dataset=reference,
        structure_matcher=DefaultDisorderedStructureMatcher())])


def _energy_evaluator(evaluator: Any, summaries: list[Any], reference: Any, ok: list[int], covered: list[bool],
                      n: int, chosen: list[Any], metrics: dict[str, Any]) -> tuple[Any, list[int]]:
    """The evaluator of the energy metrics and its rows (positions in ``ok``): ``evaluator``
    itself when the reference covers every structure; else one over the covered structures,
    whose energy metrics are added to ``metrics`` (None when none is covered)."""
    from mattergen.evaluation.metrics.energy import EnergyMetricsCapability
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator

    if EnergyMetricsCapability in evaluator.available_capability_types:
        return evaluator, list(range(len(ok)))
    # some structures lie outside the reference: energy metrics over the rest
    energy_rows = [j for j, i in enumerate(ok) if covered[i]]
    if not energy_rows:
        return None, energy_rows
    energy_evaluator = MetricsEvaluator.from_structure_summaries(
        [summaries[j] for j in energy_rows], reference=reference, n_failed_jobs=n - len(ok))
    energy_only = [m for m in energy_evaluator.available_metrics if m not in chosen]
    metrics.update({k: _plain(v) for k, v in energy_evaluator.compute_metrics(metrics=energy_only).items()})
    return energy_evaluator, energy_rows


def _strict_stability(energy_evaluator: Any, energy_rows: list[int], ok: list[int], n: int,
                      per_metric: dict[str, list], e_hull: np.ndarray) -> dict[str, Any]:
    """Fills ``e_hull`` (per input structure) from ``energy_evaluator``; returns the additional
    metrics over it (strict stability: on the hull)."""
    for j, value in zip(energy_rows, energy_evaluator.energy_capability.energy_above_hull):
        e_hull[ok[j]] = value
    known = np.isfinite(e_hull)
    novel_unique = np.zeros(n, dtype=bool)
    if "novel_unique" in per_metric:
        novel_unique[ok] = np.asarray(per_metric["novel_unique"], dtype=bool)
    strict = known & (e_hull <= STRICT_STABILITY_THRESHOLD)
    denominator = len(energy_rows) + (n - len(ok))
    return {
        "energy_metrics_over": len(energy_rows),
        "frac_stable_structures_strict": float(strict.sum() / denominator) if denominator else None,
        "frac_novel_unique_stable_structures_strict": (
            float((strict & novel_unique).sum() / denominator) if denominator else None),
    }


def _table(structures: Sequence[Any], ok: list[int], per_metric: dict[str, list], summaries: list[Any] | None,
           covered: list[bool], support: list[dict[str, int] | None], e_hull: np.ndarray) -> list[dict[str, Any]]:
    """One row per input structure (``summaries``: None without energies)."""
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
        if summaries is not None:
            _energy_columns(row, j, summaries, covered[i], support[i], e_hull[i])
        table.append(row)
    return table


def _energy_columns(row: dict[str, Any], j: int | None, summaries: list[Any], covered: bool,
                    support: dict[str, int], e_hull: float) -> None:
    """A row's relaxation, hull support and stability columns (``j``: its summary, None when
    its relaxation failed)."""
    row["relaxation_failed"] = j is None
    row["covered_by_reference"] = covered
    # what this structure's hull stands on (reference entries with an energy)
    row["hull_compounds_in_system"] = support["compounds_in_system"]
    row["hull_compounds_in_subsystems"] = support["compounds_in_subsystems"]
    row["hull_elemental_entries"] = support["elemental_entries"]
    row["hull_elements_only"] = (support["compounds_in_system"] + support["compounds_in_subsystems"]) == 0
    row["energy_per_atom"] = None if j is None else _plain(summaries[j].entry.energy_per_atom)
    row["rmsd_from_relaxation"] = None if j is None else _plain(summaries[j].rmsd_from_relaxation)
    row["energy_above_hull_per_atom"] = _plain(e_hull)
    row["stable"] = None if not np.isfinite(e_hull) else bool(e_hull <= STABILITY_THRESHOLD)
    row["stable_strict"] = None if not np.isfinite(e_hull) else bool(e_hull <= STRICT_STABILITY_THRESHOLD)
    row["sun"] = None if row["stable"] is None else bool(row["stable"] and row.get("novel_unique"))


def _hull_supports(reference: Any, structures: Sequence[Any]) -> list[dict[str, int]]:
    """:func:`crygen.reference.hull_support` of each structure's chemical system."""
    from crygen.reference import hull_support

    cache: dict[str, int] = {}
    return [hull_support(reference, s.composition.chemical_system, cache) for s in structures]


HULL_SUPPORT_KINDS = ("compounds in its system", "compounds in subsystems only", "elements only")


def hull_stands_on(compounds_in_system: int, compounds_in_subsystems: int) -> str:
    """What a structure's hull stands on (one of :data:`HULL_SUPPORT_KINDS`), from the reference
    compounds in its chemical system and in its subsystems."""
    if compounds_in_system > 0:
        return HULL_SUPPORT_KINDS[0]
    return HULL_SUPPORT_KINDS[1] if compounds_in_subsystems > 0 else HULL_SUPPORT_KINDS[2]


def _hull_support_counts(support: Sequence[dict[str, int]], e_hull: np.ndarray) -> dict[str, Any]:
    """How many stability verdicts (structures with an energy above hull) rest on a hull with
    compounds of their own system, only of subsystems, or on elements only."""
    from collections import Counter

    verdicts = [i for i in range(len(support)) if np.isfinite(e_hull[i])]
    kinds = Counter(hull_stands_on(support[i]["compounds_in_system"], support[i]["compounds_in_subsystems"])
                    for i in verdicts)
    in_system, subsystems_only, elements_only = (kinds[k] for k in HULL_SUPPORT_KINDS)
    return {
        "verdicts": len(verdicts),
        "with_compounds_in_own_system": in_system,
        "with_compounds_in_subsystems_only": subsystems_only,
        "on_elements_only": elements_only,
        "fraction_on_elements_only": elements_only / len(verdicts) if verdicts else None,
        "denominator": "structures with an energy above hull (relaxed, and every element with a reference energy)",
    }


def reported(evaluation: Evaluation) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """The metrics and additional metrics to report as plain numbers, and what is withheld from
    them (None when nothing is): when most stability verdicts rest on a hull of elements only,
    every metric that reads the hull (energy above hull, stable, S.U.N.) moves under the
    withheld block with the reason, MatterGen's values unchanged."""
    support = evaluation.additional.get("hull_support")
    fraction = support["fraction_on_elements_only"] if support else None
    if fraction is None or fraction <= ELEMENTS_ONLY_MAJORITY:
        return dict(evaluation.metrics), dict(evaluation.additional), None

    def on_hull(name: str) -> bool:
        return any(word in name for word in HULL_METRIC_WORDS)

    withheld = {
        "reason": (f"{support['on_elements_only']} of {support['verdicts']} stability verdicts rest on a hull "
                   f"with no reference compound in the structure's chemical system or its subsystems (elements "
                   f"only), where almost any compound looks stable: use a reference with compounds of these "
                   f"systems (REFERENCE=, e.g. MatterGen's Alex-MP-20)"),
        "metrics": {k: v for k, v in evaluation.metrics.items() if on_hull(k)},
        "additional_metrics": {k: v for k, v in evaluation.additional.items() if on_hull(k) and k != "hull_support"},
    }
    metrics = {k: v for k, v in evaluation.metrics.items() if k not in withheld["metrics"]}
    additional = {k: v for k, v in evaluation.additional.items() if k not in withheld["additional_metrics"]}
    return metrics, additional, withheld


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


def mattergen_metrics(structures, reference, energies=None, original_structures=None,
                      energy_correction: str = "MP2020") -> dict[str, Any]:
    """MatterGen's ``MetricsEvaluator`` called as MatterGen's ``evaluate`` calls it (the yardstick),
    with ``energy_correction``'s scheme."""
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator

    from crygen.relaxation import correction_scheme

    if energies is None:
        evaluator = MetricsEvaluator.from_structures(list(structures), reference=reference)
    else:
        evaluator = MetricsEvaluator.from_structures_and_energies(
            list(structures), list(energies), reference=reference, original_structures=original_structures,
            energy_correction_scheme=correction_scheme(energy_correction))
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

