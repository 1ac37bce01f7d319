"""Building crygen's default reference: its sources (read by :mod:`crygen.reference_sources`), a
resumable relaxation (here) and the hull's quality (:mod:`crygen.hull_quality`).

The default reference (``data/reference/reference_chgnet.gz``) holds real compounds relaxed
with the default potential exactly as generated crystals are relaxed and corrected, so an
energy above its hull compares like with like. Its sources are data files inside pinned PyPI
distributions (:data:`PACKAGED`, each hash-checked) and the embedded demo crystals:

* ``element_references``: the lowest small elemental polymorphs of matcalc's MP-PBE element
  references (with MatPES-PBE's structure for an element missing there), so every terminal
  of a phase diagram exists;
* ``demo``: the 1,000 Alexandria PBE crystals of the embedded demo data (mostly intermetallics);
* ``matbench_dielectric``: crystal-toolkit's 4,764 Materials Project insulators (oxides,
  halides, chalcogenides, nitrides), those of at most :data:`MAX_COMPOUND_ATOMS` atoms, less
  duplicates;
* ``mptrj``: Materials Project materials from the MPtrj frames in mattersim's sdist (one frame
  per material, relaxed to the potential's minimum), mostly intermetallics and other
  compounds matbench's insulators lack;
* ``mp_calc_compounds``: pymatgen's 423 MP entries with DFT energies (no structures): used only
  to measure the hull (:func:`hull_quality`), paired by formula with a matbench structure.

The build relaxes structures in parts of :data:`PART_SIZE`, each written to the work folder
when complete (``<work>/<potential and relaxation key>/part-*.json.gz``), so a build that
stops picks up where it stopped, and ``PART=k/n`` spreads the structures over n runs or
machines whose work folders are then put together. The reference is assembled once every
structure has a result.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crygen.fileio import atomic_path, read_json, sha256_file, write_json
from crygen.packaged import fetch
from crygen.parts import PartStore, settings_key
from crygen.hull_quality import corrected_entry, hull_quality, mp_pairs
from crygen.reference_sources import (
    MAX_COMPOUND_ATOMS,
    MAX_ELEMENT_ATOMS,
    PACKAGED,
    POLYMORPHS_PER_ELEMENT,
    Candidate,
    demo_candidates,
    element_candidates,
    fetch_json,
    matbench_candidates,
    mptrj_candidates,
    without_duplicates,
)

# The sources are DFT-relaxed already; a structure the potential has not settled in this many
# FIRE steps is left out (listed in the recipe) rather than entered with a too-high energy.
REFERENCE_MAX_STEPS = 150
PART_SIZE = 64


# --------------------------------------------------------------------------- relaxation in parts


def work_key(potential: dict[str, Any], relaxation: dict[str, Any]) -> str:
    """The work subfolder for results of this potential and these relaxation settings."""
    return settings_key(potential["name"], {"potential": potential, "relaxation": relaxation})


def _store(folder: Path) -> PartStore:
    return PartStore(folder, "part of the reference build")


def read_parts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every finished result in ``folder``: material id -> result (``energy`` in eV, None when the
    relaxation failed; ``structure`` as a dict)."""
    store = _store(folder)
    results: dict[str, dict[str, Any]] = {}
    for name in store.names():
        for r in store.read(name)["results"]:
            results[r["material_id"]] = r
    return results


def write_part(folder: Path, results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """A part named after its structures (so the same structures make the same part)."""
    ids = "\n".join(r["material_id"] for r in results)
    return _store(folder).write(f"part-{hashlib.sha256(ids.encode()).hexdigest()[:16]}", {**meta, "results": list(results)})


def relax_in_parts(candidates: Sequence[Candidate], potential: Any, folder: Path, relaxation: dict[str, Any],
                   share: tuple[int, int] = (1, 1), progress: bool = True) -> int:
    """Relax the candidates of share ``k`` of ``n`` (every n-th, from the k-th) that ``folder``
    holds no result for, :data:`PART_SIZE` at a time, writing each part when it is complete.
    Returns how many were relaxed."""
    import warnings

    from crygen.cli import say
    from crygen.relaxation import relax

    k, n = share
    done = read_parts(folder)
    todo = [c for j, c in enumerate(candidates) if j % n == k - 1 and c.id not in done]
    for start in range(0, len(todo), PART_SIZE):
        chunk = todo[start:start + PART_SIZE]
        cpu = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            relaxed = relax([c.structure for c in chunk], potential, fmax=relaxation["fmax_eV_per_A"],
                            max_steps=relaxation["max_steps"])
        write_part(folder, [result_record(c.id, r) for c, r in zip(chunk, relaxed)],
                   {"potential": potential.describe(), "relaxation": relaxation,
                    "cpu_seconds": round(time.process_time() - cpu, 1)})
        if progress:
            say(f"build_reference: {min(start + PART_SIZE, len(todo))}/{len(todo)} structures relaxed")
    return len(todo)


def result_record(material_id: str, r: Any) -> dict[str, Any]:
    ok = bool(r.converged and np.isfinite(r.energy))
    return {"material_id": material_id, "energy": float(r.energy) if ok else None, "converged": bool(r.converged),
            "steps": int(r.steps), "error": r.error if ok or r.error else "not converged",
            "structure": r.structure.as_dict() if ok else None}


# --------------------------------------------------------------------------- the build


@dataclass
class BuildPlan:
    """What a build relaxes, in a fixed order (shares and parts depend on it)."""

    candidates: list[Candidate]
    sources: dict[str, Any]
    duplicates: list[dict[str, str]] = field(default_factory=list)


def plan(demo_data: Path, cache: Path, all_elements: bool = True, compounds: bool = True) -> BuildPlan:
    """Every source's candidates, deduplicated (first wins: elements, demo, matbench, mptrj).

    ``all_elements=False`` and ``compounds=False`` give a small reference of the demo crystals
    and their elements (for tests)."""
    demo = demo_candidates(demo_data)
    needed = None if all_elements else {el.symbol for c in demo for el in c.structure.composition.elements}
    elements = element_candidates(fetch_json("mp_element_refs", cache), fetch_json("matpes_element_refs", cache), needed)
    sources: dict[str, Any] = {
        "element_references": {"files": [PACKAGED["mp_element_refs"].record(), PACKAGED["matpes_element_refs"].record()],
                               "polymorphs_per_element": POLYMORPHS_PER_ELEMENT, "max_atoms": MAX_ELEMENT_ATOMS,
                               "structures": len(elements)},
        "demo": {"path": str(demo_data), "sha256": sha256_file(demo_data), "structures": len(demo),
                 "license": "CC-BY 4.0, Alexandria (Schmidt et al.)",
                 "holds": "Alexandria PBE crystals with their DFT energies"},
    }
    compounds_list: list[Candidate] = []
    if compounds:
        compounds_list, larger = matbench_candidates(fetch_json("matbench_dielectric", cache))
        sources["matbench_dielectric"] = {"file": PACKAGED["matbench_dielectric"].record(),
                                          "max_atoms": MAX_COMPOUND_ATOMS, "left_out_larger": larger,
                                          "structures": len(compounds_list)}
        mptrj, larger = mptrj_candidates([fetch(PACKAGED[k], cache) for k in ("mptrj_random", "mptrj_highest_stress")])
        sources["mptrj"] = {"files": [PACKAGED["mptrj_random"].record(), PACKAGED["mptrj_highest_stress"].record()],
                            "max_atoms": MAX_COMPOUND_ATOMS, "left_out_larger": larger, "structures": len(mptrj)}
        compounds_list += mptrj
    candidates, duplicates = without_duplicates([*elements, *demo, *compounds_list])
    for name in sources:
        sources[name]["kept_after_deduplication"] = sum(c.source == name for c in candidates)
    return BuildPlan(candidates, sources, duplicates)


def seed_from_reference(reference: Path, folder: Path, potential: dict[str, Any], relaxation: dict[str, Any]) -> int:
    """Results of an earlier reference built with the same potential and relaxation, written to
    ``folder`` as one part, so a rebuild relaxes only what is new. Entries keep their
    uncorrected energies (a change of correction needs no new relaxation). Returns how many."""
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer

    from crygen.reference import recipe_path

    recipe = read_json(recipe_path(reference)) if recipe_path(reference).is_file() else {}
    if not (reference.is_file() and recipe.get("potential") == potential and recipe.get("relaxation") == relaxation
            and recipe.get("sha256") == sha256_file(reference)):
        return 0
    known = read_parts(folder)
    results = [{"material_id": e.data["material_id"], "energy": float(e.uncorrected_energy), "converged": True,
                "steps": None, "error": None, "structure": e.structure.as_dict()}
               for e in LMDBGZSerializer().deserialize(str(reference)) if e.data["material_id"] not in known]
    results += [{"material_id": x["material_id"], "energy": None, "converged": False, "steps": None,
                 "error": x["reason"], "structure": None}
                for x in recipe.get("excluded", []) if x["material_id"] not in known]
    if results:
        write_part(folder, results, {"potential": potential, "relaxation": relaxation, "seeded_from": recipe["sha256"]})
    return len(results)


def relaxation_settings() -> dict[str, Any]:
    """How reference structures are relaxed: crygen's relaxation of generated crystals (FIRE on
    an ``ExpCellFilter`` to ``fmax``, batched), capped at :data:`REFERENCE_MAX_STEPS`."""
    from crygen.relaxation import FMAX_DEFAULT

    return {"optimizer": "FIRE", "cell_filter": "ExpCellFilter", "fmax_eV_per_A": FMAX_DEFAULT,
            "max_steps": REFERENCE_MAX_STEPS}


@dataclass
class BuildResult:
    complete: bool
    relaxed_now: int
    missing: int
    recipe: dict[str, Any] | None = None


def build_reference(demo_data: Path, out: Path, work: Path, potential_spec: str = "chgnet", device: str = "cpu",
                    all_elements: bool = True, compounds: bool = True, share: tuple[int, int] = (1, 1)) -> BuildResult:
    """Relax what ``work`` holds no result for (of share ``k``/``n``), then, once every candidate
    has a result, write ``out`` (MatterGen's LMDB-gz) and its recipe beside it."""
    from crygen.relaxation import load_potential

    cache = work / "sources"
    build_plan = plan(demo_data, cache, all_elements, compounds)
    potential = load_potential(potential_spec, device)
    identity, relaxation = potential.describe(), relaxation_settings()
    folder = work / work_key(identity, relaxation)
    seed_from_reference(out, folder, identity, relaxation)
    relaxed_now = relax_in_parts(build_plan.candidates, potential, folder, relaxation, share)
    results = read_parts(folder)
    missing = [c for c in build_plan.candidates if c.id not in results]
    if missing:
        return BuildResult(False, relaxed_now, len(missing))
    recipe = assemble(build_plan, results, out, identity, potential.energy_correction, relaxation,
                      fetch_json("mp_calc_compounds", cache) if compounds else None)
    recipe["relaxed_in_this_build"] = relaxed_now
    recipe["relaxation_cpu_seconds"] = _cpu_seconds(folder)
    from crygen.reference import recipe_path

    write_json(recipe_path(out), recipe)
    return BuildResult(True, relaxed_now, 0, recipe)


def _cpu_seconds(folder: Path) -> dict[str, Any]:
    """CPU time the parts record (a part seeded from an earlier file records none)."""
    total, timed, untimed = 0.0, 0, 0
    store = _store(folder)
    for name in store.names():
        part = store.read(name)
        if "cpu_seconds" in part:
            total, timed = total + part["cpu_seconds"], timed + len(part["results"])
        else:
            untimed += len(part["results"])
    return {"total": round(total, 1), "structures_timed": timed, "structures_untimed": untimed}


def assemble(build_plan: BuildPlan, results: dict[str, dict[str, Any]], out: Path, potential: dict[str, Any],
             correction: str, relaxation: dict[str, Any], calc_compounds: dict[str, Any] | None) -> dict[str, Any]:
    """The reference entries (potential energies, ``correction`` applied as to generated
    crystals), written to ``out``; returns the recipe, with the hull's quality."""
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer
    from pymatgen.core import Structure

    from crygen.relaxation import CORRECTION_DESCRIPTIONS, correction_scheme

    scheme = correction_scheme(correction)
    entries, excluded, pairs = [], [], []
    for c in build_plan.candidates:
        r = results[c.id]
        if r["energy"] is None:
            excluded.append({"material_id": c.id, "reason": r["error"] or "not converged"})
            continue
        data = {"source": c.source}
        if c.dft_energy is not None:
            data.update(dft_energy=c.dft_energy, dft_origin=c.dft_origin)
        entry = corrected_entry(Structure.from_dict(r["structure"]), r["energy"], scheme, c.id, **data)
        entries.append(entry)
        if c.dft_energy is not None:  # the DFT side: the source's DFT-relaxed structure, MP2020 once
            pairs.append((corrected_entry(c.structure, c.dft_energy, correction_scheme("MP2020"), c.id), entry))
    quality = None
    if calc_compounds is not None:
        pairs += mp_pairs(calc_compounds, entries)
        elements = {p.composition.elements[0] for _, p in pairs if len(p.composition) == 1}
        quality = hull_quality([(d, p) for d, p in pairs if set(d.composition.elements) <= elements])
    name = f"crygen-{potential['name']}-default"
    dataset = ReferenceDataset.from_entries(name, entries)
    with atomic_path(out) as tmp:
        LMDBGZSerializer().serialize(dataset, str(tmp))  # its uncompressed LMDB goes with the temp dir
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.data["source"]] = counts.get(e.data["source"], 0) + 1
    sources = dict(build_plan.sources)
    if calc_compounds is not None:
        sources["mp_calc_compounds"] = {"file": PACKAGED["mp_calc_compounds"].record(),
                                        "use": "hull quality only (DFT energies, paired by reduced formula with the "
                                               "lowest-energy matbench structure of the reference)"}
    return {
        "name": name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "entries": len(entries),
        "entries_by_source": counts,
        "compounds": sum(len(e.composition) > 1 for e in entries),
        "sources": sources,
        "deduplication": {"matcher": "pymatgen StructureMatcher (defaults)", "order": "element_references, demo, "
                          "matbench_dielectric, mptrj (the first kept)", "dropped": build_plan.duplicates},
        "potential": potential,
        "relaxation": relaxation,
        "correction": correction,
        "correction_meaning": CORRECTION_DESCRIPTIONS[correction],
        "hull_quality": quality,
        "excluded": excluded,
    }


