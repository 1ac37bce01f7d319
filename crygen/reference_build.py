"""Building crygen's default reference: sources, a resumable relaxation, the hull's quality.

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

import gzip
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from crygen.fileio import CrygenError, atomic_path, dumps_json, one_line, read_json, sha256_file, write_json
from crygen.packaged import PackagedFile, fetch

POLYMORPHS_PER_ELEMENT = 2
MAX_ELEMENT_ATOMS = 16
# Relaxation cost grows with atoms (~0.09 s per atom on two CPU cores): 20 atoms keep 3,423 of
# matbench's 4,764 structures (median 12 atoms) and the build near an hour on a laptop.
MAX_COMPOUND_ATOMS = 20
# The sources are DFT-relaxed already; a structure the potential has not settled in this many
# FIRE steps is left out (listed in the recipe) rather than entered with a too-high energy.
REFERENCE_MAX_STEPS = 150
PART_SIZE = 64
STABLE_WITHIN = 0.1  # eV/atom, MatterGen's stability threshold


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


# --------------------------------------------------------------------------- relaxation in parts


def work_key(potential: dict[str, Any], relaxation: dict[str, Any]) -> str:
    """The work subfolder for results of this potential and these relaxation settings."""
    text = json.dumps({"potential": potential, "relaxation": relaxation}, sort_keys=True)
    return f"{potential['name']}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def read_parts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every finished result in ``folder``: material id -> result (``energy`` in eV, None when the
    relaxation failed; ``structure`` as a dict)."""
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("part-*.json.gz")):
        try:
            part = json.loads(gzip.decompress(path.read_bytes()))
        except Exception as e:
            raise CrygenError(path, f"unreadable part of the reference build ({one_line(e)}); delete it to redo it")
        for r in part["results"]:
            results[r["material_id"]] = r
    return results


def write_part(folder: Path, results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    ids = "\n".join(r["material_id"] for r in results)
    path = folder / f"part-{hashlib.sha256(ids.encode()).hexdigest()[:16]}.json.gz"
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(dumps_json({**meta, "results": list(results)}, indent=None).encode(), mtime=0))
    return path


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


# --------------------------------------------------------------------------- corrections and hulls


def corrected_entry(structure: Any, energy: float, scheme: Any, material_id: str, **data: Any) -> Any:
    """A ``ComputedStructureEntry`` made by the MatterGen code that treats generated crystals
    (``MetricsStructureSummary.from_structure_and_energy``), with ``scheme``'s correction."""
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary

    entry = MetricsStructureSummary.from_structure_and_energy(
        structure, energy, original_structure=structure, energy_correction_scheme=scheme).entry
    entry.data.update(material_id=material_id, **data)
    return entry


def paired_mp_entries(calc_compounds: dict[str, Any], potential_entries: Iterable[Any]) -> list[tuple[Any, Any]]:
    """pymatgen's MP entries (raw DFT, with their own run parameters) that share a reduced formula
    with a matbench entry of the reference, each paired with the lowest-energy such entry.

    The pair is of one composition, not of one relaxed structure: MP's entry and matbench's
    structure come from the same database, but may be different polymorphs."""
    from monty.json import MontyDecoder

    lowest: dict[str, Any] = {}
    for e in potential_entries:
        if e.data.get("source") == "matbench_dielectric":
            formula = e.composition.reduced_formula
            if formula not in lowest or e.energy_per_atom < lowest[formula].energy_per_atom:
                lowest[formula] = e
    pairs = []
    for d in calc_compounds.values():
        mp = MontyDecoder().process_decoded(d)
        twin = lowest.get(mp.composition.reduced_formula)
        if twin is not None and len(mp.composition) > 1:
            pairs.append((mp, twin))
    return pairs


def hull_quality(pairs: Sequence[tuple[Any, Any]], threshold: float = STABLE_WITHIN) -> dict[str, Any]:
    """The potential's hull against DFT's over the same compositions.

    ``pairs``: (DFT entry, potential entry) of one composition, both corrected as their hull
    needs. Each compound's chemical system gets two hulls over the same entries (those of the
    system and its subsystems), one from each side; its energy above each is compared: mean
    absolute error (also over the compounds not on both hulls, whose error is not zero by
    construction), and agreement on "stable within ``threshold``" with DFT as the truth
    (precision, recall, F1); overall and for each source's compounds. The formation energy's
    error (against each side's lowest elemental entries) says more where a compound stands
    alone in its system's entries, and so on both hulls."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    pairs = [(d, p) for d, p in pairs if np.isfinite(d.energy) and np.isfinite(p.energy)]
    dft = [PDEntry(d.composition, d.energy, name=str(i)) for i, (d, _) in enumerate(pairs)]
    ml = [PDEntry(p.composition, p.energy, name=str(i)) for i, (_, p) in enumerate(pairs)]
    compounds = [i for i, (d, _) in enumerate(pairs) if len(d.composition) > 1]
    # one hull per chemical system, over the entries of it and its subsystems (as MatterGen
    # does): one diagram over every element at once is beyond qhull
    hulls: dict[frozenset, tuple[Any, Any]] = {}
    e_dft, e_ml, form_dft, form_ml = [], [], [], []
    for i in compounds:
        system = frozenset(dft[i].composition.elements)
        if system not in hulls:
            inside = [j for j, e in enumerate(dft) if set(e.composition.elements) <= system]
            hulls[system] = (PhaseDiagram([dft[j] for j in inside]), PhaseDiagram([ml[j] for j in inside]))
        e_dft.append(hulls[system][0].get_e_above_hull(dft[i], allow_negative=True))
        e_ml.append(hulls[system][1].get_e_above_hull(ml[i], allow_negative=True))
        form_dft.append(hulls[system][0].get_form_energy_per_atom(dft[i]))
        form_ml.append(hulls[system][1].get_form_energy_per_atom(ml[i]))
    e_dft, e_ml = np.array(e_dft), np.array(e_ml)
    form_error = np.abs(np.array(form_ml) - np.array(form_dft))
    source = np.array([pairs[i][1].data.get("source", "?") for i in compounds])
    return {
        "compounds": len(compounds),
        "entries_in_each_hull": len(pairs),
        "stable_within_eV_per_atom": threshold,
        **_agreement(e_dft, e_ml, threshold),
        "formation_energy_mae_eV_per_atom": round(float(form_error.mean()), 4) if len(form_error) else None,
        "by_source": {name: {"compounds": int(np.sum(source == name)),
                             **_agreement(e_dft[source == name], e_ml[source == name], threshold),
                             "formation_energy_mae_eV_per_atom": round(float(form_error[source == name].mean()), 4)}
                      for name in sorted(set(source))},
        "method": ("per chemical system, two convex hulls over the same entries: DFT energies (raw PBE(+U) with MP2020 "
                   "corrections) and the potential's relaxed energies (corrected as the evaluation corrects them); each "
                   "compound's energy above its own side's hull compared, DFT taken as the truth"),
    }


def _agreement(e_dft: np.ndarray, e_ml: np.ndarray, threshold: float) -> dict[str, Any]:
    """Errors of the potential's energies above hull against DFT's, and agreement on "stable
    within ``threshold``" (precision, recall, F1; None where undefined)."""
    error = np.abs(e_ml - e_dft)
    off_hull = (e_dft > 1e-6) | (e_ml > 1e-6)  # a compound on both hulls has no error by construction
    truth, said = e_dft <= threshold, e_ml <= threshold
    tp = int(np.sum(truth & said))
    precision = tp / int(said.sum()) if said.any() else None
    recall = tp / int(truth.sum()) if truth.any() else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None

    def r(x):
        return None if x is None else round(float(x), 4)

    return {
        "energy_above_hull_mae_eV_per_atom": r(error.mean()) if len(error) else None,
        "energy_above_hull_median_abs_error_eV_per_atom": r(np.median(error)) if len(error) else None,
        "off_hull_compounds": int(off_hull.sum()),
        "energy_above_hull_mae_off_hull_eV_per_atom": r(error[off_hull].mean()) if off_hull.any() else None,
        "dft_stable": int(truth.sum()), "potential_stable": int(said.sum()), "both_stable": tp,
        "precision": r(precision), "recall": r(recall), "f1": r(f1),
    }


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
    for path in folder.glob("part-*.json.gz"):
        part = json.loads(gzip.decompress(path.read_bytes()))
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
        pairs += _mp_pairs(calc_compounds, entries)
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


def _mp_pairs(calc_compounds: dict[str, Any], entries: Sequence[Any]) -> list[tuple[Any, Any]]:
    """pymatgen's MP entries paired with the reference's matbench entries, MP2020-corrected with
    their own run parameters (an entry MP2020 rejects is left out)."""
    import warnings

    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    compatibility = MaterialsProject2020Compatibility(check_potcar=False)
    pairs = []
    for mp, twin in paired_mp_entries(calc_compounds, entries):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            corrected = compatibility.process_entry(mp)
        if corrected is not None:
            corrected.data["material_id"] = mp.entry_id
            pairs.append((corrected, twin))
    return pairs
