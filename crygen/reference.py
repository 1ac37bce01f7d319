"""Reference sets for novelty and energy above hull, in MatterGen's format (``LMDBGZSerializer``).

The default reference (``data/reference/``) is built by ``make reference``
(``crygen/reference_build.py``): about 4,500 crystals (the demo's Alexandria intermetallics,
Materials Project insulators from crystal-toolkit, elemental polymorphs from matcalc) relaxed
with the default potential and corrected exactly as generated crystals are, with a recipe
beside it (``<name>.json``) that records sources, potential, correction and the hull's quality
against DFT.

A user's own reference (``REFERENCE=<file.gz>``, e.g. MatterGen's Alex-MP-20 release) is read
unchanged. The training set is added for novelty only: its entries carry no energy (NaN), which
MatterGen's hull construction skips.

``REFERENCE`` is resolved once into a :class:`Reference` that is passed down: its file, content
hash, recipe and MatterGen dataset are each read once, and it answers whether it is ordered.
"""

from __future__ import annotations

import functools
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from crygen.fileio import CrygenError, one_line, read_json, sha256_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT / "data" / "reference" / "reference_chgnet.gz"


def recipe_path(reference: Path) -> Path:
    return reference.with_name(reference.name.removesuffix(".gz") + ".json")


# --------------------------------------------------------------------------- reading


def reference_file(spec: str | Path) -> Path:
    """The file ``REFERENCE`` names: ``default`` or a path to a MatterGen LMDB-gz reference."""
    path = DEFAULT_REFERENCE if str(spec) == "default" else Path(spec)
    if not path.is_file():
        hint = " (run `make reference` to build the default)" if str(spec) == "default" else ""
        raise CrygenError(path, f"reference set not found{hint}")
    return path


class Reference:
    """The reference set ``REFERENCE`` names, resolved once (:meth:`from_spec`) and passed down:
    its file, content hash, recipe and MatterGen dataset are each worked out once, on first use,
    and whether it is ordered is answered by it (:attr:`is_ordered`), in the spirit of pymatgen's
    ``InputSet``. :meth:`with_training_set` adds training structures for novelty, sharing what
    was read already."""

    def __init__(self, path: Path, training: Sequence[Any] = (), _read: dict[str, Any] | None = None):
        self.path = Path(path)
        self.training = list(training)
        self._read = {} if _read is None else _read  # shared with with_training_set's copies

    @classmethod
    def from_spec(cls, spec: str | Path) -> "Reference":
        """``default`` or a path to a MatterGen LMDB-gz reference (a :class:`CrygenError` when absent)."""
        return cls(reference_file(spec))

    def _once(self, key: str, compute: Any) -> Any:
        if key not in self._read:
            self._read[key] = compute()
        return self._read[key]

    @property
    def sha256(self) -> str:
        """The file's content hash (Alex-MP-20 is 873 MB: hashed once)."""
        return self._once("sha256", lambda: sha256_file(self.path))

    @property
    def recipe(self) -> dict[str, Any]:
        """:func:`reference_recipe` of the file."""
        return self._once("recipe", lambda: reference_recipe(self.path))

    @property
    def dataset(self) -> Any:
        """MatterGen's ``ReferenceDataset`` of the file, without the training set (loaded once)."""
        return self._once("dataset", lambda: _deserialize(self.path))

    @functools.cached_property
    def matching_dataset(self) -> Any:
        """The dataset structures are matched against: the reference plus the training set."""
        return with_training_set(self.dataset, self.training)

    @functools.cached_property
    def is_ordered(self) -> bool:
        """MatterGen's ``is_ordered`` of :attr:`matching_dataset`, answered sooner (:func:`all_ordered`)."""
        return all_ordered(self.matching_dataset)

    def with_training_set(self, training: Sequence[Any]) -> "Reference":
        """This reference with ``training`` added for novelty (nothing read again)."""
        return Reference(self.path, training, self._read)

    def info(self) -> dict[str, Any]:
        """What the output records about the reference (name, path, hash, entries, potential, correction)."""
        info = {"name": self.dataset.name, "path": str(self.path), "sha256": self.sha256, "entries": len(self.dataset)}
        if self.recipe:
            info["potential"] = self.recipe.get("potential")
            info["correction"] = self.recipe.get("correction")
        return info

    def check_potential(self, potential: dict[str, Any], allow_mismatch: bool = False) -> dict[str, Any]:
        """:func:`check_potential` of this reference."""
        return check_potential(self.path, potential, allow_mismatch, recipe=self.recipe)


def _deserialize(path: Path) -> Any:
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer

    try:
        return LMDBGZSerializer().deserialize(str(path))
    except Exception as e:
        raise CrygenError(path, f"not a MatterGen LMDB-gz reference ({one_line(e)})") from None


def load_reference(spec: str | Path) -> tuple[Any, dict[str, Any]]:
    """The ``ReferenceDataset`` named by ``REFERENCE`` and what the output records about it."""
    reference = Reference.from_spec(spec)
    return reference.dataset, reference.info()


def reference_recipe(path: Path) -> dict[str, Any]:
    """The recipe ``build_reference`` wrote beside a reference (potential, correction, sources);
    empty for a reference without one (MatterGen's DFT releases)."""
    return read_json(recipe_path(path)) if recipe_path(path).is_file() else {}


def with_training_set(reference: Any, training: Sequence[Any]) -> Any:
    """``reference`` plus the training structures, which count toward novelty but not the hull.

    The reference is not copied (MatterGen's Alex-MP-20 has 846k entries in an LMDB): lookups
    by chemical system and reduced formula consult both."""
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset, ReferenceDatasetImpl
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    if not training:
        return reference
    extra = ReferenceDataset.from_entries("training set", [
        ComputedStructureEntry(s, energy=np.nan, data={"material_id": f"train:{s.properties.get('material_id', i)}"})
        for i, s in enumerate(training)
    ])

    class Joined(ReferenceDatasetImpl):
        def __init__(self):
            self._entries = ()
            self.parts = (reference, extra)  # for all_ordered

        def __iter__(self):
            yield from reference
            yield from extra

        def __len__(self):
            return len(reference) + len(extra)

        @functools.cached_property
        def entries_by_chemsys(self):
            return _JoinedLookup(reference.entries_by_chemsys, extra.entries_by_chemsys)

        @functools.cached_property
        def entries_by_reduced_formula(self):
            return _JoinedLookup(reference.entries_by_reduced_formula, extra.entries_by_reduced_formula)

    return ReferenceDataset(f"{reference.name}+training set", Joined())


class _JoinedLookup(Mapping):
    """Two ``key -> list of entries`` lookups read as one (each key read once: an LMDB-backed
    lookup deserialises its entries on every access)."""

    def __init__(self, first: Mapping, second: Mapping):
        self.first, self.second = first, second
        self._read: dict[str, list] = {}

    def __getitem__(self, key):
        if key not in self._read:
            first, second = self.first.get(key), self.second.get(key)
            if first is None and second is None:
                raise KeyError(key)
            self._read[key] = [*(first or []), *(second or [])]
        return self._read[key]

    def __contains__(self, key):
        return key in self.first or key in self.second

    def __iter__(self):
        yield from self.first
        yield from (k for k in self.second if k not in self.first)

    def __len__(self):
        return sum(1 for _ in self)


def all_ordered(reference: Any) -> bool:
    """``reference.is_ordered`` (MatterGen's: every entry's structure is ordered), the same answer
    sooner. MatterGen decodes every entry of an LMDB reference into a ``ComputedStructureEntry``
    for it (seconds for a few thousand entries, growing with the reference); here an entry
    whose stored sites each hold one species with occupancy exactly 1 is ordered without decoding
    (such a site is ordered by pymatgen's ``Site.is_ordered``: one species, total occupancy 1);
    any other entry is decoded and asked as MatterGen asks it."""
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBBackedReferenceDatasetImpl, lmdb_get
    from monty.json import MontyDecoder

    if "is_ordered" in getattr(reference, "__dict__", {}):  # MatterGen's cached_property, already known
        return reference.is_ordered
    impl = getattr(reference, "impl", None)
    if isinstance(impl, LMDBBackedReferenceDatasetImpl):
        with impl.env.begin() as txn:
            for chemsys, counts in impl.num_entries_by_chemsys_reduced_formulas.items():
                for reduced_formula, length in counts.items():
                    for i in range(length):
                        entry = lmdb_get(txn, f"{chemsys}.{reduced_formula}.{i}")
                        if not _plainly_ordered(entry) and not MontyDecoder().process_decoded(entry).structure.is_ordered:
                            return False
        return True
    if hasattr(impl, "parts"):  # with_training_set's
        return all(all_ordered(part) for part in impl.parts)
    return reference.is_ordered


def _plainly_ordered(entry: Any) -> bool:
    """A stored entry (``ComputedStructureEntry.as_dict()``) each of whose sites holds exactly one
    species with occupancy exactly 1; False for anything else, including an unexpected layout."""
    try:
        return all(len(site["species"]) == 1 and type(site["species"][0]["occu"]) in (int, float)
                   and site["species"][0]["occu"] == 1 for site in entry["structure"]["sites"])
    except (KeyError, TypeError, IndexError):
        return False


def terminal_elements_with_energy(reference: Any) -> set[str]:
    """Elements with at least one elemental entry of known energy (a phase diagram's terminals)."""
    lookup = reference.entries_by_chemsys
    return {chemsys for chemsys in list(lookup)
            if "-" not in chemsys and any(np.isfinite(e.energy) for e in lookup[chemsys])}


def hull_support(reference: Any, chemical_system: str, energies_by_chemsys: dict[str, int] | None = None) -> dict[str, int]:
    """What the convex hull of ``chemical_system`` stands on in ``reference``: the entries with an
    energy that MatterGen's hull takes (``EnergyMetricsCapability._get_phase_diagram``: every
    subsystem, entries without energy skipped), counted as compounds (>= 2 elements) of the
    system itself, compounds of its proper subsystems, and elemental entries.

    ``energies_by_chemsys``: a cache of entries with an energy per chemical system, shared between
    calls (an LMDB reference decodes a system's entries on every lookup)."""
    from itertools import combinations

    cache = {} if energies_by_chemsys is None else energies_by_chemsys
    lookup = reference.entries_by_chemsys
    elements = chemical_system.split("-")
    out = {"compounds_in_system": 0, "compounds_in_subsystems": 0, "elemental_entries": 0}
    for size in range(1, len(elements) + 1):
        for subset in combinations(elements, size):
            key = "-".join(sorted(subset))
            if key not in cache:
                cache[key] = sum(1 for e in lookup.get(key, []) if np.isfinite(e.energy))
            part = ("elemental_entries" if size == 1 else
                    "compounds_in_system" if size == len(elements) else "compounds_in_subsystems")
            out[part] += cache[key]
    return out


def check_potential(reference: Path, potential: dict[str, Any], allow_mismatch: bool = False,
                    recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Whether energies from ``potential`` (``potential_identity``) belong on the hull of the
    ``reference`` file: what ``metrics_summary.json`` records as ``potential_check``.

    A potential other than the one the reference's recipe records, or a reference whose
    entries were corrected otherwise than this potential's energies are
    (``crygen.relaxation.energy_correction``: an older crygen corrected CHGNet energies with
    MP2020 a second time), is refused (a :class:`CrygenError` naming the reference) unless
    ``allow_mismatch``; then it is recorded. A reference without a recorded potential (no recipe
    beside it, as MatterGen's DFT releases) is taken as DFT: relaxed ML energies on a DFT hull
    is what MatterGen's own evaluation does, so it passes, and the record says the reference's
    energies are of unknown origin. ``recipe``: the reference's, when the caller has read it."""
    from crygen.relaxation import energy_correction

    recipe = reference_recipe(reference) if recipe is None else recipe
    recorded = recipe.get("potential")
    record: dict[str, Any] = {"reference_potential": recorded, "evaluation_potential": potential}
    if not recorded:
        return {**record, "status": "reference records no potential: taken as DFT energies (as MatterGen's "
                                    "evaluation places ML-relaxed energies on a DFT hull)"}
    same = (recorded.get("weights_sha256") == potential.get("weights_sha256") if recorded.get("weights_sha256")
            else recorded.get("name") == potential.get("name"))
    # recipes before the correction was chosen per potential name MP2020's class
    reference_correction = recipe.get("correction") if recipe.get("correction") in ("none", "MP2020") else "MP2020"
    needed = energy_correction(potential["name"])
    record.update(reference_correction=reference_correction, evaluation_correction=needed)
    if same and reference_correction == needed:
        return {**record, "status": "same potential"}
    if not same:
        problem = (f"built with {recorded.get('name')} ({recorded.get('weights')}) but POTENTIAL is "
                   f"{potential.get('name')} ({potential.get('weights')}); energies of two potentials on one hull "
                   f"are not comparable")
        fix = f"set POTENTIAL={recorded.get('name')}, or"
    else:
        problem = (f"entries corrected with {reference_correction!r} but {potential.get('name')}'s energies need "
                   f"{needed!r} (rebuild it with `make reference`)")
        fix = "or"
    if not allow_mismatch:
        raise CrygenError(reference, f"{problem} ({fix} ALLOW_POTENTIAL_MISMATCH=1 / --allow-potential-mismatch "
                                     f"to go on, recorded)")
    return {**record, "status": "MISMATCH, allowed by --allow-potential-mismatch", "problem": problem}