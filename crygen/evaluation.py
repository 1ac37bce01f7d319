"""Metrics of generated crystals: MatterGen's ``MetricsEvaluator``, the same numbers, sooner.

The metric names, definitions and values are MatterGen's (validity, uniqueness, novelty,
energy above hull after MP2020 correction, stability within 0.1 eV/atom, S.U.N.). crygen gets
them faster without changing them, in one process:

* SMACT validity answers at the first valid oxidation-state combination
  (``mattergen_compat.smact_validity``); each structure's validity checks run once (MatterGen's
  metrics ask twice);
* uniqueness and novelty run MatterGen's own loops (``get_unique``/``get_matches``) on MatterGen's
  own groups, but each pair is decided by :class:`PreparedMatcher`, which takes the same steps
  as MatterGen's ``DefaultDisorderedStructureMatcher.fit`` with the work that depends on one
  structure only (copy without oxidation states, composition, Niggli and primitive reduction,
  Hume-Rothery disordering) done once per structure instead of once per pair; the reference's
  reduced forms are kept between evaluations (:class:`ReducedFormStore`, read in a few queries);
* the capability's dataset (MatterGen deep-copies every entry) is copied by a pickle round trip,
  the same entries in half the time (:func:`_dataset`);
* whether the reference is ordered is read from its stored sites (``reference.all_ordered``)
  instead of decoding every entry;
* BLAS runs on one thread: matching inverts tens of thousands of 3x3 matrices.

The results are handed to MatterGen's evaluator, which computes every metric from them.

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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

STABILITY_THRESHOLD = 0.1  # eV/atom, MatterGen's DEFAULT_STABILITY_THRESHOLD
STRICT_STABILITY_THRESHOLD = 0.0  # eV/atom, on the hull (as LeMat-GenBench also reports)
REFERENCE_METRIC_WORDS = ("novel", "precision", "recall")
# Metrics that read a structure's place on its hull: withheld when most hulls hold no compound.
HULL_METRIC_WORDS = ("hull", "stable")
# Withheld when more than this fraction of the stability verdicts rest on elements only.
ELEMENTS_ONLY_MAJORITY = 0.5


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


class _Prepared:
    """One structure as ``DisorderedStructureMatcher.fit`` sees it, worked out once per evaluation
    instead of once per pair: its copy without oxidation states, composition, order, and, when a
    pair needs them, its reduced (Niggli + primitive) form and its disordered variant."""

    __slots__ = ("nooxi", "composition", "reduced_formula", "ordered", "disordered", "stored")

    def __init__(self, structure: Any, stored: bool = False):
        from pymatgen.core import Element

        self.stored = stored  # a reference structure: its reduced form is kept between evaluations
        if all(isinstance(species, Element) for site in structure for species in site.species):
            # nothing to remove: MatterGen's copy would hold the same lattice, coordinates,
            # properties and species (remove_oxidation_states rebuilds each site's {Element: occu}
            # as {Element: 0.0 + occu}, the same amounts); nothing below modifies it
            self.nooxi = structure
        else:
            self.nooxi = structure.copy().remove_oxidation_states()
        self.composition = self.nooxi.composition
        self.reduced_formula = self.composition.reduced_formula
        self.ordered = self.nooxi.is_ordered
        self.disordered: tuple[Any, bool] | None = None


def _reduced_form(structure: Any) -> Any:
    """What ``StructureMatcher._get_reduced_structure`` computes for ``structure`` inside ``fit``
    (after ``_process_species`` copied it), without pymatgen's LRU cache: that cache compares
    each new structure with every cached one of the same composition (a third of the reduction
    time in MatterGen's evaluator), and it can hand back the reduced form of an earlier structure
    equal to this one within pymatgen's tolerances (1e-5), so what it gives depends on what was
    matched before; crygen reduces every structure itself, as a first call would."""
    from pymatgen.analysis.structure_matcher import SiteOrderedIStructure, StructureMatcher

    # pymatgen reduces SiteOrderedIStructure.from_sites(Structure.from_sites(structure)): both
    # copies take each site's species, fractional coordinates, properties and label as they are,
    # and neither the structure's charge nor its properties, so one copy gives the same sites
    return StructureMatcher._get_reduced_istructure.__wrapped__(SiteOrderedIStructure.from_sites(structure), True, True)


def _reduced_once(matcher_class: type) -> type:
    """``matcher_class`` whose ``fit`` takes each structure's reduced form from ``self.reduced``
    (by ``id``) instead of reducing both structures of every pair. Everything else is pymatgen's
    own ``fit``: the scaling, supercell and lattice search depend on the pair and run as before."""
    from pymatgen.core import Structure

    class ReducedOnce(matcher_class):
        reduced: dict[int, Any]

        def _process_species(self, structures):
            # pymatgen copies the pair here to remove ignored species (none in MatterGen's
            # matchers) and so that nothing after it touches the caller's structures; _preprocess
            # below builds new structures from the cached reduced forms, so the copy changes nothing.
            return list(structures)

        def _get_reduced_structure(self, struct, primitive_cell=True, niggli=True):
            assert primitive_cell and niggli, "cached reduced forms are Niggli + primitive"
            return Structure.from_sites(self.reduced[id(struct)])  # a fresh copy, as pymatgen's

    ReducedOnce.__name__ = f"ReducedOnce{matcher_class.__name__}"
    return ReducedOnce


class PreparedMatcher:
    """MatterGen's ``DefaultDisorderedStructureMatcher.fit``, decision for decision, on
    :class:`_Prepared` structures: the per-structure work (copies without oxidation states,
    compositions, Niggli and primitive reduction, disordering by Hume-Rothery substitution) is
    done once per structure rather than for every pair; the per-pair work is pymatgen's own.

    ``fit(a, b)`` returns what ``DefaultDisorderedStructureMatcher().fit(a.structure,
    b.structure)`` returns; the argument order matters, as there (only the first is disordered)."""

    def __init__(self, store: "ReducedFormStore | None" = None) -> None:
        from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.definition = definition = DefaultDisorderedStructureMatcher()
        self.ordered_matcher = _copy_as(definition.ordered_structurematcher, _reduced_once(type(definition.ordered_structurematcher)))
        # DisorderedStructureMatcher's super().fit is pymatgen's StructureMatcher.fit on its settings
        self.disordered_matcher = _copy_as(definition, _reduced_once(StructureMatcher))
        self.reduced: dict[int, Any] = {}
        self.ordered_matcher.reduced = self.disordered_matcher.reduced = self.reduced
        self._keep: list[Any] = []  # the structures whose ids key ``reduced``
        self.store = store

    def prepare(self, structure: Any, stored: bool = False) -> _Prepared:
        """``stored``: the reduced form is looked up in (and added to) ``store`` (reference entries)."""
        return _Prepared(structure, stored=stored)

    def _reduce(self, structure: Any, stored: bool = False) -> None:
        if id(structure) not in self.reduced:
            if stored and self.store is not None:
                self.reduced[id(structure)] = self.store.reduced_form(structure)
            else:
                self.reduced[id(structure)] = _reduced_form(structure)
            self._keep.append(structure)

    def _disordered(self, p: _Prepared) -> tuple[Any, bool]:
        from mattergen.evaluation.utils.structure_matcher import try_make_structure_disordered

        if p.disordered is None:
            p.disordered = try_make_structure_disordered(
                structure=p.nooxi,
                relative_radius_difference_threshold=self.definition.relative_radius_difference_threshold,
                electronegativity_difference_threshold=self.definition.electronegativity_difference_threshold)
        return p.disordered

    def fit(self, p1: _Prepared, p2: _Prepared) -> bool:
        # the steps of DisorderedStructureMatcher.fit, in its order
        if p1.nooxi == p2.nooxi:
            return True
        if p1.ordered and p2.ordered:
            if p2.reduced_formula != p1.reduced_formula:
                return False
            self._reduce(p1.nooxi, p1.stored)
            self._reduce(p2.nooxi, p2.stored)
            if self.ordered_matcher.fit(p1.nooxi, p2.nooxi):
                return True
            disordered_1, can_be_disordered_1 = self._disordered(p1)
            if can_be_disordered_1:
                self._reduce(disordered_1)
                return self.disordered_matcher.fit(disordered_1, p2.nooxi)
            return False
        if not p1.composition.fractional_composition.almost_equals(
                p2.composition.fractional_composition,
                atol=self.definition.reduced_formula_atol, rtol=self.definition.reduced_formula_rtol):
            return False
        self._reduce(p1.nooxi, p1.stored)
        self._reduce(p2.nooxi, p2.stored)
        return self.disordered_matcher.fit(p1.nooxi, p2.nooxi)


class ReducedFormStore:
    """Reduced forms of reference structures (what :func:`_reduced_form` computes), kept between
    evaluations: a reference is matched against again and again, and reducing its structures is
    most of the matching work. An SQLite file, keyed by a hash of everything the reduction reads
    (pymatgen's version, lattice, and each site's species, occupancies, fractional coordinates
    and label; a structure with site properties is not stored); the value is the reduced
    structure pickled (floats bit for bit). Best effort: a store that cannot be opened or written
    is skipped and the form computed."""

    def __init__(self, path: Path | None):
        import sqlite3

        self.db = None
        self.pending: list[tuple[str, bytes]] = []
        self.keys: dict[int, str | None] = {}  # by id of the structure, for those prefetched
        self._alive: list[Any] = []  # the structures whose ids key ``keys``
        self.prefetched: dict[str, bytes] = {}
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=30)
            self.db.execute("CREATE TABLE IF NOT EXISTS reduced (key TEXT PRIMARY KEY, value BLOB)")
        except (OSError, sqlite3.Error):
            self.db = None

    @staticmethod
    def key(structure: Any) -> str | None:
        import hashlib

        import pymatgen.core

        if any(site.properties for site in structure):
            return None
        h = hashlib.sha256(f"pymatgen {pymatgen.core.__version__}; numpy {np.__version__}; niggli+primitive".encode())
        h.update(np.ascontiguousarray(structure.lattice.matrix, dtype=float).tobytes())
        h.update(repr(tuple(structure.lattice.pbc)).encode())
        for site in structure:
            h.update(repr((sorted((str(sp), type(sp).__name__, float(occu).hex()) for sp, occu in site.species.items()),
                           site.label)).encode())
            h.update(np.ascontiguousarray(site.frac_coords, dtype=float).tobytes())
        return h.hexdigest()

    def prefetch(self, structures: Sequence[Any]) -> None:
        """Read the stored forms of ``structures`` in a few queries instead of one per structure
        (``structures`` must stay alive and unchanged until their forms are asked for)."""
        import sqlite3

        if self.db is None:
            return
        for s in structures:
            if id(s) not in self.keys:
                self.keys[id(s)] = self.key(s)
                self._alive.append(s)
        wanted = sorted({k for k in self.keys.values() if k is not None} - self.prefetched.keys())
        try:
            for start in range(0, len(wanted), 500):  # under SQLite's limit on parameters
                chunk = wanted[start:start + 500]
                self.prefetched.update(self.db.execute(
                    f"SELECT key, value FROM reduced WHERE key IN ({','.join('?' * len(chunk))})", chunk))
        except sqlite3.Error:
            pass

    def reduced_form(self, structure: Any) -> Any:
        import pickle
        import sqlite3

        if self.db is None:
            return _reduced_form(structure)
        key = self.keys[id(structure)] if id(structure) in self.keys else self.key(structure)
        if key is None:
            return _reduced_form(structure)
        row = (self.prefetched[key],) if key in self.prefetched else None
        try:
            if row is None:
                row = self.db.execute("SELECT value FROM reduced WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            row = None
        if row is not None:
            try:
                return pickle.loads(row[0])
            except Exception:  # an unreadable value (a damaged file): computed again
                pass
        reduced = _reduced_form(structure)
        self.pending.append((key, pickle.dumps(reduced, protocol=pickle.HIGHEST_PROTOCOL)))
        return reduced

    def close(self) -> None:
        import sqlite3

        if self.db is None:
            return
        try:
            if self.pending:
                with self.db:
                    self.db.executemany("INSERT OR IGNORE INTO reduced VALUES (?, ?)", self.pending)
        except sqlite3.Error:
            pass
        finally:
            self.db.close()
            self.db = None


def reduced_form_store_path() -> Path | None:
    """``CRYGEN_REDUCED_FORMS`` (a file; ``off`` for none), by default ``data/.cache/reduced_forms.sqlite``."""
    value = os.environ.get("CRYGEN_REDUCED_FORMS", "")
    if value.lower() == "off":
        return None
    return Path(value) if value else Path(__file__).resolve().parents[1] / "data" / ".cache" / "reduced_forms.sqlite"


def _copy_as(matcher: Any, cls: type) -> Any:
    """An instance of ``cls`` with ``matcher``'s settings (tolerances, comparator, flags)."""
    out = cls.__new__(cls)
    out.__dict__.update(matcher.__dict__)
    return out


def _dataset(capability: Any) -> Any:
    """MatterGen's ``BaseMetricsCapability.dataset``: a copy of each structure summary's entry,
    numbered, as a ``ReferenceDataset``. The copies are made by a pickle round trip instead of
    ``deepcopy`` (half the time): the same attributes, floats bit for bit, nothing shared with
    the caller's entries (grouping by formula removes oxidation states from the copies in place)."""
    import pickle

    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset

    entries = [pickle.loads(pickle.dumps(s.entry, protocol=pickle.HIGHEST_PROTOCOL))
               for s in capability._structure_summaries]
    for i, e in enumerate(entries):
        e.entry_id = i
    return ReferenceDataset.from_entries("data_entries", entries)


def precompute(capability: Any, store: Path | None = None) -> dict[int, tuple[bool, bool]]:
    """Per-structure validity checks, and uniqueness and novelty filled into ``capability``:
    MatterGen's own loops (``get_unique``, ``get_matches``) on MatterGen's own groups, with
    :class:`PreparedMatcher` deciding each pair as MatterGen's matcher does.

    Returns the checks by ``id`` of the structure (see :func:`answered_checks`). Uniqueness and
    novelty are left to MatterGen's own path for anything but ordered structures and the default
    matcher. ``store``: where the reference's reduced forms are kept (:class:`ReducedFormStore`)."""
    from mattergen.evaluation.metrics import structure as metrics
    from mattergen.evaluation.utils.dataset_matcher import (
        OrderedDatasetMatcher,
        OrderedDatasetUniquenessComputer,
        get_global_match_dict_from_local_dict,
        get_mask_from_local_index,
        get_matches,
        get_unique,
    )
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    structures = list(capability.structures)
    with fast_smact_validity():
        checks = {id(s): (bool(metrics.is_smact_valid(s)), bool(metrics.structure_validity(s))) for s in structures}
    matching = (isinstance(capability.uniqueness_computer, OrderedDatasetUniquenessComputer)
                and isinstance(capability.dataset_matcher, OrderedDatasetMatcher)
                and type(capability.structure_matcher) is DefaultDisorderedStructureMatcher)
    if not matching:
        return checks
    from mattergen.evaluation.metrics.core import BaseMetricsCapability

    if "dataset" not in capability.__dict__ and type(capability).dataset is BaseMetricsCapability.__dict__["dataset"]:
        capability.__dict__["dataset"] = _dataset(capability)
    data = capability.dataset.entries_by_reduced_formula
    lookup = capability.reference_dataset.entries_by_reduced_formula
    matcher = PreparedMatcher(ReducedFormStore(store))
    try:
        groups = {k: [matcher.prepare(e.structure) for e in entries] for k, entries in data.items()}
        reference = {k: list(lookup[k]) for k in data if k in lookup}  # each group read once
        matcher.store.prefetch([e.structure for entries in reference.values() for e in entries])
        unique = {k: get_unique(matcher, group) for k, group in groups.items()}
        local_matches: dict[str, dict] = {k: {} for k in data}
        for k, entries in reference.items():
            local_matches[k] = dict(get_matches(
                matcher, groups[k], [matcher.prepare(e.structure, stored=True) for e in entries]))
    finally:
        matcher.store.close()
    capability.__dict__["is_unique"] = get_mask_from_local_index(data, unique)
    capability.__dict__["matches_in_reference"] = get_global_match_dict_from_local_dict(data, reference, local_matches)
    return checks


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
    energy_correction: str = "MP2020",
) -> Evaluation:
    """MatterGen's metrics of ``structures`` (relaxed, with total ``energies`` in eV, or not).

    ``energy_correction``: what the potential's energies need on the hull
    (``crygen.relaxation.energy_correction``), passed to MatterGen as its
    ``energy_correction_scheme``. A structure with a non-finite energy is a failed relaxation:
    as in MatterGen it is left out and counted in ``n_failed_jobs``.
    """
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator
    from mattergen.evaluation.metrics.structure import StructureMetricsCapability
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher
    from threadpoolctl import threadpool_limits

    from crygen.reference import all_ordered, hull_support, terminal_elements_with_energy
    from crygen.relaxation import correction_scheme

    n = len(structures)
    has_energy = energies is not None
    ok = [i for i in range(n) if not has_energy or np.isfinite(energies[i])]
    if has_energy:
        scheme = correction_scheme(energy_correction)
        summaries = [MetricsStructureSummary.from_structure_and_energy(
            structures[i], float(energies[i]),
            original_structure=original_structures[i] if original_structures is not None else None,
            energy_correction_scheme=scheme) for i in ok]
    else:
        summaries = [MetricsStructureSummary.from_structure(structures[i]) for i in ok]
    terminals = terminal_elements_with_energy(reference) if has_energy else set()
    covered = [all(el.symbol in terminals for el in s.composition.elements) for s in structures]

    logging.getLogger("MatterGen").setLevel(logging.ERROR)  # coverage is reported below, once
    if hasattr(reference, "__dict__"):  # MatterGen's cached_property, the same value found sooner
        reference.__dict__["is_ordered"] = all_ordered(reference)
    with contextlib.ExitStack() as stack:
        # Structure matching inverts tens of thousands of 3x3 matrices: a multi-threaded BLAS
        # spends more waking its threads than computing (several times more on a busy machine).
        stack.enter_context(threadpool_limits(limits=1))
        stack.enter_context(fast_smact_validity())
        if has_energy:
            evaluator = MetricsEvaluator.from_structure_summaries(summaries, reference=reference,
                                                                  n_failed_jobs=n - len(ok))
        else:  # structure metrics only, as MetricsEvaluator.from_structures
            evaluator = MetricsEvaluator([StructureMetricsCapability(
                structure_summaries=summaries, reference_dataset=reference,
                structure_matcher=DefaultDisorderedStructureMatcher())])
        stack.enter_context(answered_checks(precompute(evaluator.structure_capability, reduced_form_store_path())))
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
    support: list[dict[str, int] | None] = [None] * n
    if has_energy:
        cache: dict[str, int] = {}
        support = [hull_support(reference, s.composition.chemical_system, cache) for s in structures]
        additional["hull_support"] = _hull_support_counts(support, e_hull)

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
            # what this structure's hull stands on (reference entries with an energy)
            row["hull_compounds_in_system"] = support[i]["compounds_in_system"]
            row["hull_compounds_in_subsystems"] = support[i]["compounds_in_subsystems"]
            row["hull_elemental_entries"] = support[i]["elemental_entries"]
            row["hull_elements_only"] = (support[i]["compounds_in_system"] + support[i]["compounds_in_subsystems"]) == 0
            row["energy_per_atom"] = None if j is None else _plain(summaries[j].entry.energy_per_atom)
            row["rmsd_from_relaxation"] = None if j is None else _plain(summaries[j].rmsd_from_relaxation)
            row["energy_above_hull_per_atom"] = _plain(e_hull[i])
            row["stable"] = None if not np.isfinite(e_hull[i]) else bool(e_hull[i] <= STABILITY_THRESHOLD)
            row["stable_strict"] = None if not np.isfinite(e_hull[i]) else bool(e_hull[i] <= STRICT_STABILITY_THRESHOLD)
            row["sun"] = None if row["stable"] is None else bool(row["stable"] and row.get("novel_unique"))
        table.append(row)
    uncovered = sorted({structures[i].composition.chemical_system for i in range(n) if has_energy and not covered[i]})
    return Evaluation(metrics, additional, table, uncovered)


def _hull_support_counts(support: Sequence[dict[str, int]], e_hull: np.ndarray) -> dict[str, Any]:
    """How many stability verdicts (structures with an energy above hull) rest on a hull with
    compounds of their own system, only of subsystems, or on elements only."""
    verdicts = [i for i in range(len(support)) if np.isfinite(e_hull[i])]
    in_system = sum(1 for i in verdicts if support[i]["compounds_in_system"] > 0)
    subsystems_only = sum(1 for i in verdicts if support[i]["compounds_in_system"] == 0
                          and support[i]["compounds_in_subsystems"] > 0)
    elements_only = len(verdicts) - in_system - subsystems_only
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


# --------------------------------------------------------------------------- settings


def structures_source(results: Path) -> Path:
    """The structures a results path stands for: a results folder's generated_crystals.extxyz,
    else the path itself (an extxyz, a CIF zip, a folder of CIFs)."""
    crystals = Path(results) / "generated_crystals.extxyz"
    return crystals if crystals.is_file() else Path(results)


def structures_sha256(source: Path) -> str:
    """Content hash of the structures read from ``source``: a file, or the files directly in a
    folder (the CIF reader does not descend, so an evaluation folder inside changes nothing)."""
    from crygen.fileio import sha256_file, sha256_tree

    if source.is_file():
        return sha256_file(source)
    return sha256_tree(source, {p.name: sha256_file(p) for p in sorted(source.iterdir()) if p.is_file()})


def generation_info(results: Path) -> dict[str, Any]:
    """``generation.json`` beside the structures (a pipeline's or ``make sample``'s), {} without one."""
    from crygen.fileio import read_json

    path = Path(results) / "generation.json" if Path(results).is_dir() else None
    return read_json(path) if path is not None and path.is_file() else {}


def evaluation_settings(results: Path, reference: Path, training_data: Path | None, relax: bool,
                        potential: dict[str, Any] | None, fmax: float, max_steps: int,
                        generation: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation of ``results`` depends on, by content: its structures, the reference
    file, the training set (novelty), and the relaxation settings. ``metrics_summary.json``
    records it; an evaluation is reused, and a pipeline's accepted by ``summarize``, only when
    the recorded settings equal these. ``potential``: ``potential_identity`` (None unrelaxed);
    ``generation``: :func:`generation_info` of ``results`` (its condition, when conditioned)."""
    from crygen.fileio import sha256_file, sha256_tree
    from crygen.relaxation import energy_correction

    settings = {
        "structures_sha256": structures_sha256(structures_source(results)),
        "reference_sha256": sha256_file(reference),
        "training_data_sha256": sha256_tree(training_data) if training_data else None,
        "relaxed": relax,
        "potential": potential if relax else None,
        "energy_correction": energy_correction(potential["name"]) if relax else None,
        "fmax": fmax if relax else None,
        "max_steps": max_steps if relax else None,
    }
    condition = generation.get("condition")
    if condition:
        settings["condition"] = condition
    return settings


def settings_folder_name(settings: dict[str, Any], reference: Path) -> str:
    """A folder name that says which settings made an evaluation, e.g.
    ``relaxed-chgnet-d14ab7c0_reference_chgnet-ce08026c`` (potential and reference by name and
    the start of their content hash), for ``eval-gen`` without ``EVAL_OUT``."""
    potential = settings["potential"]
    how = f"relaxed-{potential['name']}-{potential['weights_sha256'][:8]}" if settings["relaxed"] else "unrelaxed"
    return f"{how}_{reference.name.removesuffix('.gz')}-{settings['reference_sha256'][:8]}"


def settings_differences(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The names of the settings in which ``recorded`` differs from ``expected``."""
    return [k for k in sorted({*recorded, *expected}) if recorded.get(k) != expected.get(k)]


VALIDITY_KINDS = ("structure_validity", "comp_validity", "structure_comp_validity")  # MatterGen's per-structure names


SAMPLE_PARTS = ("drawn", "written", "failed_sanity_check", "lost_in_failed_batches")


def sample_counts(generation: dict[str, Any], structures: int, generation_path: Path) -> dict[str, int] | None:
    """``generation.json``'s account of the samples drawn, checked against itself and the
    ``structures`` read (None without one: structures from elsewhere)."""
    from crygen.fileio import CrygenError

    samples = generation.get("samples")
    if samples is None:
        return None
    if not isinstance(samples, dict) or not all(
            isinstance(samples.get(k), int) and not isinstance(samples.get(k), bool) and samples[k] >= 0
            for k in SAMPLE_PARTS):
        raise CrygenError(generation_path, f"'samples' must hold non-negative integers {', '.join(SAMPLE_PARTS)}")
    if samples["drawn"] != samples["written"] + samples["failed_sanity_check"] + samples["lost_in_failed_batches"]:
        raise CrygenError(generation_path, "'samples': drawn is not written + failed_sanity_check + lost_in_failed_batches")
    if samples["written"] != structures:
        raise CrygenError(generation_path, f"'samples' says {samples['written']} written, the results hold {structures} "
                                           f"structures (mixed outputs of two generations?)")
    return {k: samples[k] for k in SAMPLE_PARTS}


def validity_over_samples(evaluation: Evaluation, samples: dict[str, int] | None) -> dict[str, Any]:
    """Validity over every sample the generator drew (``samples``: :func:`sample_counts`),
    beside MatterGen's over the structures written: a sample that failed generate's sanity check
    or was lost in a failed batch is invalid, and so is a structure whose relaxation failed.
    Without an account of the samples the denominator is the structures given."""
    written = len(evaluation.table)
    valid = {kind: sum(1 for row in evaluation.table if row.get(kind) is True) for kind in VALIDITY_KINDS
             if any(kind in row for row in evaluation.table)}
    if samples is None:
        return {"drawn": None, "structures_given": written, "valid": valid,
                "denominator": f"the {written} structures given (no sample accounting in a generation.json: "
                               f"samples a generator dropped are not known)"}
    drawn = samples["drawn"]
    return {
        **samples,
        "valid": valid,
        **{f"frac_{kind}_over_drawn": (count / drawn if drawn else None) for kind, count in valid.items()},
        "denominator": (f"all {drawn} drawn samples: the {samples['failed_sanity_check']} that failed the sanity check, "
                        f"the {samples['lost_in_failed_batches']} lost in failed batches and any failed relaxation count "
                        f"as invalid; MatterGen's avg_*_validity in metrics are over the {written} written structures"),
    }
