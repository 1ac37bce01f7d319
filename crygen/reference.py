"""Reference sets for novelty and energy above hull, in MatterGen's format (``LMDBGZSerializer``).

The default reference (``data/reference/``) is built by ``make reference`` from crystals that
PyPI carries, relaxed with the default potential and MP2020-corrected exactly as MatterGen
treats generated structures (``MetricsStructureSummary.from_structure_and_energy``), so that an
energy above hull compares like with like:

* the 1,000 Alexandria PBE crystals of the embedded demo data (CC-BY 4.0);
* elemental polymorphs from matcalc 0.7.0's ``MP-PBE-Element-Refs.json.gz`` (Materials Project
  PBE): the ``POLYMORPHS_PER_ELEMENT`` lowest in DFT energy with at most
  ``MAX_ELEMENT_ATOMS`` atoms, for every element there, and for an element missing there (Yb)
  the structure of ``MatPES-PBE-Element-Refs.json.gz``, so every terminal of a phase diagram
  exists.

A rebuild with the same potential and relaxation settings keeps the entries already relaxed
and relaxes only sources that are new.

A user's own reference (``REFERENCE=<file.gz>``, e.g. MatterGen's Alex-MP-20 release) is read
unchanged. The training set is added for novelty only: its entries carry no energy (NaN), which
MatterGen's hull construction skips.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from crygen.fileio import CrygenError, atomic_path, one_line, read_json, sha256_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT / "data" / "reference" / "reference_chgnet.gz"
ELEMENT_REFS_SDIST = "matcalc==0.7.0"
ELEMENT_REFS = {  # member of the sdist -> SHA-256
    "matcalc-0.7.0/src/matcalc/elemental_refs/MP-PBE-Element-Refs.json.gz":
        "66b350622126ca725c0ab1197b2ec3e27f752ef25dfeff21eb1db7be9ad72f0c",
    "matcalc-0.7.0/src/matcalc/elemental_refs/MatPES-PBE-Element-Refs.json.gz":
        "24b804bcba5d4e7bffa23ba141bfe1364154fd8fea5547655036610a7be495af",
}
POLYMORPHS_PER_ELEMENT = 2
MAX_ELEMENT_ATOMS = 16
# The sources are DFT-relaxed already; a structure CHGNet has not settled in this many FIRE
# steps is left out (listed in the recipe) rather than entered with a too-high energy.
REFERENCE_MAX_STEPS = 150


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


def load_reference(spec: str | Path, sha256: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The ``ReferenceDataset`` named by ``REFERENCE`` and what the output records about it
    (``sha256``: the file's hash when the caller has it already; Alex-MP-20 is 873 MB)."""
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer

    path = reference_file(spec)
    try:
        dataset = LMDBGZSerializer().deserialize(str(path))
    except Exception as e:
        raise CrygenError(path, f"not a MatterGen LMDB-gz reference ({one_line(e)})") from None
    info = {"name": dataset.name, "path": str(path), "sha256": sha256 or sha256_file(path), "entries": len(dataset)}
    recipe = reference_recipe(path)
    if recipe:
        info["potential"] = recipe.get("potential")
        info["correction"] = recipe.get("correction")
    return dataset, info


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


def check_potential(reference: Path, potential: dict[str, Any], allow_mismatch: bool = False) -> dict[str, Any]:
    """Whether energies from ``potential`` (``potential_identity``) belong on the hull of the
    ``reference`` file: what ``metrics_summary.json`` records as ``potential_check``.

    A potential other than the one the reference's recipe records is refused (a
    :class:`CrygenError` naming the reference) unless ``allow_mismatch``; then it is recorded.
    A reference without a recorded potential (no recipe beside it, as MatterGen's DFT releases)
    is taken as DFT: relaxed ML energies on a DFT hull is what MatterGen's own evaluation does,
    so it passes, and the record says the reference's energies are of unknown origin."""
    recorded = reference_recipe(reference).get("potential")
    record: dict[str, Any] = {"reference_potential": recorded, "evaluation_potential": potential}
    if not recorded:
        return {**record, "status": "reference records no potential: taken as DFT energies (as MatterGen's "
                                    "evaluation places ML-relaxed energies on a DFT hull)"}
    same = (recorded.get("weights_sha256") == potential.get("weights_sha256") if recorded.get("weights_sha256")
            else recorded.get("name") == potential.get("name"))
    if same:
        return {**record, "status": "same potential"}
    problem = (f"built with {recorded.get('name')} ({recorded.get('weights')}) but POTENTIAL is "
               f"{potential.get('name')} ({potential.get('weights')}); energies of two potentials on one hull "
               f"are not comparable")
    if not allow_mismatch:
        raise CrygenError(reference, f"{problem} (set POTENTIAL={recorded.get('name')}, or ALLOW_POTENTIAL_MISMATCH=1 "
                                     f"/ --allow-potential-mismatch to go on, recorded)")
    return {**record, "status": "MISMATCH, allowed by --allow-potential-mismatch", "problem": problem}


# --------------------------------------------------------------------------- building


def fetch_element_refs() -> tuple[dict[str, Any], dict[str, Any]]:
    """matcalc's MP-PBE and MatPES-PBE elemental references, from its sdist on PyPI, hash-checked."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "matcalc",
                        "--quiet", "-d", tmp, ELEMENT_REFS_SDIST], check=True)
        (sdist,) = Path(tmp).glob("matcalc-*.tar.gz")
        out = []
        with tarfile.open(sdist) as tar:
            for member, sha256 in ELEMENT_REFS.items():
                data = tar.extractfile(member).read()
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise CrygenError(member, f"SHA-256 mismatch in {ELEMENT_REFS_SDIST}")
                out.append(json.loads(gzip.decompress(data)))
    return out[0], out[1]


def element_polymorphs(mp_refs: dict[str, Any], matpes_refs: dict[str, Any],
                       elements: set[str] | None = None) -> list[tuple[str, Any]]:
    """(id, Structure) of the lowest-energy small polymorphs of every element (or of ``elements``)."""
    from pymatgen.core import Structure

    out = []
    for element in sorted(e for e in {*mp_refs, *matpes_refs} if elements is None or e in elements):
        if element not in mp_refs:
            out.append((f"matpes-pbe-element:{element}", Structure.from_dict(matpes_refs[element]["structure"])))
            continue
        energies = mp_refs[element]["energy_per_atom"]
        structures = mp_refs[element]["structure"]
        order = [i for i in np.argsort(energies) if len(structures[i]["sites"]) <= MAX_ELEMENT_ATOMS]
        for rank, i in enumerate(order[:POLYMORPHS_PER_ELEMENT]):
            out.append((f"mp-pbe-element:{element}:{rank}", Structure.from_dict(structures[i])))
    return out


def corrected_entries(ids: Sequence[str], relaxed: Sequence[Any]) -> list[Any]:
    """MP2020-corrected entries, built by the same MatterGen code that treats generated crystals."""
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary

    entries = []
    for material_id, r in zip(ids, relaxed):
        if not (r.converged and np.isfinite(r.energy)):
            continue
        entry = MetricsStructureSummary.from_structure_and_energy(r.structure, r.energy, original_structure=r.structure).entry
        entry.data["material_id"] = material_id
        entries.append(entry)
    return entries


def build_reference(demo_data: Path, out: Path, potential_spec: str = "chgnet", device: str = "cpu",
                    all_elements: bool = True) -> dict[str, Any]:
    """Relax the sources with the potential, correct with MP2020, write ``out`` and its recipe.

    ``all_elements=False`` takes elemental references only for the elements of ``demo_data``
    (a small reference for tests). Entries of an existing ``out`` built with the same potential
    and settings are kept; only new sources are relaxed."""
    import warnings

    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer

    from crygen.fileio import write_json
    from crygen.relaxation import FMAX_DEFAULT, load_potential, relax
    from crygen.structures import read_entries

    demo = [(e.material_id, e.structure) for e in read_entries(demo_data) if e.structure is not None]
    needed = None if all_elements else {el.symbol for _, s in demo for el in s.composition.elements}
    elements = element_polymorphs(*fetch_element_refs(), needed)
    potential = load_potential(potential_spec, device)
    relaxation = {"optimizer": "FIRE", "cell_filter": "ExpCellFilter", "fmax_eV_per_A": FMAX_DEFAULT,
                  "max_steps": REFERENCE_MAX_STEPS}
    identity = potential.describe()
    kept, excluded = _reusable(out, identity, relaxation)
    done = {e.data["material_id"] for e in kept} | {x["material_id"] for x in excluded}
    todo = [(i, s) for i, s in elements + demo if i not in done]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        relaxed = relax([s for _, s in todo], potential, max_steps=REFERENCE_MAX_STEPS, progress=True)
        entries = kept + corrected_entries([i for i, _ in todo], relaxed)
    excluded += [{"material_id": i, "reason": r.error or "not converged"}
                 for (i, _), r in zip(todo, relaxed) if not (r.converged and np.isfinite(r.energy))]
    wanted = {i for i, _ in elements + demo}
    entries = [e for e in entries if e.data["material_id"] in wanted]
    dataset = ReferenceDataset.from_entries(f"crygen-{potential.name}-demo", entries)
    with atomic_path(out) as tmp:
        LMDBGZSerializer().serialize(dataset, str(tmp))  # its uncompressed LMDB goes with the temp dir
    recipe = {
        "name": dataset.name,
        "sha256": sha256_file(out),
        "entries": len(entries),
        "sources": {
            "demo_data": {"path": str(demo_data), "sha256": sha256_file(demo_data), "structures": len(demo),
                          "license": "CC-BY 4.0, Alexandria (Schmidt et al.)"},
            "element_references": {"package": ELEMENT_REFS_SDIST, "members": ELEMENT_REFS,
                                   "polymorphs_per_element": POLYMORPHS_PER_ELEMENT,
                                   "max_atoms": MAX_ELEMENT_ATOMS, "structures": len(elements)},
        },
        "all_elements": all_elements,
        "potential": identity,
        "relaxation": relaxation,
        "correction": "MaterialsProject2020Compatibility (via MatterGen's VasprunLike)",
        "relaxed_in_this_build": len(todo),
        "excluded": [x for x in excluded if x["material_id"] in wanted],
    }
    write_json(recipe_path(out), recipe)
    return recipe


def _reusable(out: Path, potential: dict[str, Any], relaxation: dict[str, Any]) -> tuple[list, list]:
    """Entries and exclusions of an earlier build of ``out`` with the same potential and settings."""
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer

    if not (out.is_file() and recipe_path(out).is_file()):
        return [], []
    recipe = read_json(recipe_path(out))
    if recipe.get("potential") != potential or recipe.get("relaxation") != relaxation \
            or recipe.get("sha256") != sha256_file(out):
        return [], []
    return list(LMDBGZSerializer().deserialize(str(out))), list(recipe.get("excluded", []))
