"""The default reference's sources: structures inside pinned, hash-checked PyPI distributions
(:data:`PACKAGED`) and the embedded demo crystals, read into :class:`Candidate` structures for
:mod:`crygen.reference_build` to relax; what each source is and why is in that module's docstring.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crygen.packaged import PackagedFile, fetch

POLYMORPHS_PER_ELEMENT = 2
MAX_ELEMENT_ATOMS = 16
# Relaxation cost grows with atoms (~0.09 s per atom on two CPU cores): 20 atoms keep 3,423 of
# matbench's 4,764 structures (median 12 atoms) and the build near an hour on a laptop.
MAX_COMPOUND_ATOMS = 20


PACKAGED = {f.key: f for f in (
    PackagedFile("mp_element_refs", "matcalc==0.7.0", "sdist",
                 "matcalc-0.7.0/src/matcalc/elemental_refs/MP-PBE-Element-Refs.json.gz",
                 "66b350622126ca725c0ab1197b2ec3e27f752ef25dfeff21eb1db7be9ad72f0c",
                 "BSD-3-Clause (matcalc); data: Materials Project, CC-BY 4.0",
                 "elemental polymorphs with MP PBE(+U) energies"),
    PackagedFile("matpes_element_refs", "matcalc==0.7.0", "sdist",
                 "matcalc-0.7.0/src/matcalc/elemental_refs/MatPES-PBE-Element-Refs.json.gz",
                 "24b804bcba5d4e7bffa23ba141bfe1364154fd8fea5547655036610a7be495af",
                 "BSD-3-Clause (matcalc); data: MatPES, CC-BY 4.0",
                 "one structure per element (used for elements missing from MP-PBE)"),
    PackagedFile("matbench_dielectric", "crystal-toolkit==2026.7.20", "wheel",
                 "crystal_toolkit/apps/examples/matbench_dielectric.json.gz",
                 "a9ce0587b3f719f65c74d05c623edaf983a451770f2917443b9e82924cbceb25",
                 "crystal-toolkit: LBNL BSD; data: Materials Project via matbench, CC-BY 4.0",
                 "4,764 MP structures of insulators, without energies or ids"),
    PackagedFile("mptrj_random", "mattersim==1.2.3", "sdist",
                 "mattersim-1.2.3/data/benchmarks/mptrj-random-1k.xyz",
                 "8e48469016e5baf69d765580416238c81ea84887db61dc424c43936ebf50f7e5",
                 "mattersim: MIT; data: MPtrj (Materials Project trajectories), CC-BY 4.0",
                 "1,000 frames of MP relaxation trajectories (998 materials), random"),
    PackagedFile("mptrj_highest_stress", "mattersim==1.2.3", "sdist",
                 "mattersim-1.2.3/data/benchmarks/mptrj-highest-stress-1k.xyz",
                 "20ce1cd8da3ccdc45c1904a8b3bf9583f03c595b914682661de221a633170249",
                 "mattersim: MIT; data: MPtrj (Materials Project trajectories), CC-BY 4.0",
                 "1,000 frames of MP relaxation trajectories (939 materials), the most stressed"),
    PackagedFile("mp_calc_compounds", "pymatgen==2024.10.29", "wheel",
                 "pymatgen/entries/calc_compounds.json.gz",
                 "7ba509a1b58d936c44bdd6fe746e4aeaa1b0230dd65bc07098efbc17073fdc3b",
                 "pymatgen: MIT; data: Materials Project, CC-BY 4.0",
                 "423 MP ComputedEntries with raw PBE(+U) energies, without structures"),
)}


def fetch_json(key: str, cache: Path) -> Any:
    return json.loads(gzip.decompress(fetch(PACKAGED[key], cache)))


# --------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """A structure to relax into the reference, with what DFT says of it where known."""

    id: str
    source: str
    structure: Any  # pymatgen Structure as the source gives it
    dft_energy: float | None = None  # total eV, raw PBE(+U) (before any correction)
    dft_origin: str | None = None


def element_candidates(mp_refs: dict[str, Any], matpes_refs: dict[str, Any],
                       elements: set[str] | None = None) -> list[Candidate]:
    """The lowest-energy small polymorphs of every element (or of ``elements``)."""
    from pymatgen.core import Structure

    out = []
    for element in sorted(e for e in {*mp_refs, *matpes_refs} if elements is None or e in elements):
        if element not in mp_refs:  # MatPES energies are not on MP's scale: structure only
            out.append(Candidate(f"matpes-pbe-element:{element}", "element_references",
                                 Structure.from_dict(matpes_refs[element]["structure"])))
            continue
        energies = mp_refs[element]["energy_per_atom"]
        structures = mp_refs[element]["structure"]
        order = [i for i in np.argsort(energies) if len(structures[i]["sites"]) <= MAX_ELEMENT_ATOMS]
        for rank, i in enumerate(order[:POLYMORPHS_PER_ELEMENT]):
            structure = Structure.from_dict(structures[i])
            out.append(Candidate(f"mp-pbe-element:{element}:{rank}", "element_references", structure,
                                 float(energies[i]) * len(structure), "Materials Project PBE (matcalc MP-PBE refs)"))
    return out


def demo_candidates(demo_data: Path) -> list[Candidate]:
    """The demo crystals with their Alexandria PBE total energies."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    for atoms in ase.io.read(demo_data, ":"):
        try:
            energy = float(atoms.get_potential_energy())
        except Exception:
            energy = None
        out.append(Candidate(str(atoms.info["alexandria_id"]), "demo", AseAtomsAdaptor.get_structure(atoms),
                             energy, "Alexandria PBE (demo data)" if energy is not None else None))
    return out


def matbench_candidates(data: dict[str, Any], max_atoms: int = MAX_COMPOUND_ATOMS) -> tuple[list[Candidate], int]:
    """matbench_dielectric's structures of at most ``max_atoms`` atoms, in the file's order,
    and how many larger ones were left out."""
    from pymatgen.core import Structure

    out, larger = [], 0
    for key, d in data["structure"].items():
        structure = Structure.from_dict(d)
        if len(structure) > max_atoms:
            larger += 1
            continue
        out.append(Candidate(f"matbench_dielectric:{key}", "matbench_dielectric", structure))
    return out, larger


def mptrj_candidates(texts: Sequence[bytes], max_atoms: int = MAX_COMPOUND_ATOMS) -> tuple[list[Candidate], int]:
    """One structure per Materials Project material in MPtrj frame files (the first frame of
    each trajectory id), of at most ``max_atoms`` atoms, and how many larger ones were left out.

    A frame is a step of MP's own relaxation, not its minimum: relaxing it with the potential
    gives the potential's minimum of that material (its DFT energy is of the frame, so unused)."""
    import io

    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    out, seen, larger = [], set(), 0
    for text in texts:
        for atoms in ase.io.read(io.StringIO(text.decode()), ":", format="extxyz"):
            material = str(atoms.info["mptrj_traj_id"])
            if material in seen:
                continue
            seen.add(material)
            if len(atoms) > max_atoms:
                larger += 1
                continue
            out.append(Candidate(f"mptrj:{material}", "mptrj", AseAtomsAdaptor.get_structure(atoms)))
    return out, larger


def without_duplicates(candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The first of each set of structures pymatgen's ``StructureMatcher`` (its defaults) calls the
    same, and a record of each dropped one and the one it duplicates."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    kept: list[Candidate] = []
    by_formula: dict[str, list[Candidate]] = {}
    dropped = []
    for c in candidates:
        same = by_formula.setdefault(c.structure.composition.reduced_formula, [])
        twin = next((k for k in same if matcher.fit(k.structure, c.structure)), None)
        if twin is not None:
            dropped.append({"material_id": c.id, "duplicate_of": twin.id})
            continue
        same.append(c)
        kept.append(c)
    return kept, dropped


