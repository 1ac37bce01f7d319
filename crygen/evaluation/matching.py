"""Structure matching for uniqueness and novelty: MatterGen's ``DefaultDisorderedStructureMatcher``
decision for decision, with the per-structure work done once per structure.

:class:`PreparedMatcher` takes the same steps as MatterGen's matcher; the work that depends on
one structure only (copy without oxidation states, composition, Niggli and primitive reduction,
Hume-Rothery disordering) is done once per structure instead of once per pair, and the
reference's reduced forms are kept between evaluations (:class:`ReducedFormStore`, read in a
few queries). The capability's dataset (MatterGen deep-copies every entry) is copied by a pickle
round trip, the same entries in half the time (:func:`_dataset`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


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
    return Path(value) if value else ROOT / "data" / ".cache" / "reduced_forms.sqlite"


def _copy_as(matcher: Any, cls: type) -> Any:
    """An instance of ``cls`` with ``matcher``'s settings (tolerances, comparator, flags)."""
    out = cls.__new__(cls)
    out.__dict__.update(matcher.__dict__)
    return out


def _dataset(capability: Any) -> Any:
    """MatterGen's ``BaseMetricsCapability.dataset``: a copy of each structure summary's entry,
    numbered, as a ``ReferenceDataset`` (:func:`numbered_dataset`)."""
    return numbered_dataset([s.entry for s in capability._structure_summaries])


def numbered_dataset(entries: Sequence[Any]) -> Any:
    """A copy of each entry, numbered, as a ``ReferenceDataset`` (as MatterGen's
    ``BaseMetricsCapability.dataset`` makes it). The copies are made by a pickle round trip
    instead of ``deepcopy`` (half the time): the same attributes, floats bit for bit, nothing
    shared with the caller's entries (grouping by formula removes oxidation states from the
    copies in place)."""
    import pickle

    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset

    copies = [pickle.loads(pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL)) for e in entries]
    for i, e in enumerate(copies):
        e.entry_id = i
    return ReferenceDataset.from_entries("data_entries", copies)
