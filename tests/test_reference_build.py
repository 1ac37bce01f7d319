"""crygen/reference_build.py and stages/build_reference.py: the default reference, its build
(resumable, in shares), its correction and the hull's measured quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import demo_subset, error_line, run_stage


def _recipe():
    from crygen.reference import DEFAULT_REFERENCE, recipe_path

    return json.loads(recipe_path(DEFAULT_REFERENCE).read_text())


def test_default_reference_holds_real_compounds_corrected_as_generated_crystals(demo_data):
    import ase.io

    from crygen.reference import DEFAULT_REFERENCE, load_reference, terminal_elements_with_energy
    from crygen.reference_sources import MAX_COMPOUND_ATOMS, PACKAGED
    from crygen.relaxation import energy_correction, potential_identity

    reference, info = load_reference("default")
    recipe = _recipe()
    assert info["sha256"] == recipe["sha256"] and info["entries"] == recipe["entries"] == len(reference)
    assert DEFAULT_REFERENCE.stat().st_size == recipe["bytes"] < 20e6
    assert recipe["potential"] == potential_identity("chgnet")
    # the correction the evaluation applies to CHGNet energies, i.e. none: every entry uncorrected
    assert recipe["correction"] == energy_correction("chgnet") == "none"
    entries = list(reference)
    assert all(np.isfinite(e.energy) and e.correction == 0 for e in entries)
    # the sources, pinned by hash; real compounds are most of it
    assert recipe["sources"]["demo"]["sha256"] == "067b94bde28b2c88b57c3e38cab72bee7e551820b7eb3489eaf49d1595f538d2"
    assert recipe["sources"]["matbench_dielectric"]["file"] == PACKAGED["matbench_dielectric"].record()
    by_source = {}
    for e in entries:
        by_source[e.data["source"]] = by_source.get(e.data["source"], 0) + 1
    assert by_source == recipe["entries_by_source"]
    assert by_source["matbench_dielectric"] >= 3000 and by_source["mptrj"] >= 900 and by_source["demo"] >= 950
    assert max(len(e.structure) for e in entries if e.data["source"] == "matbench_dielectric") <= MAX_COMPOUND_ATOMS
    oxides = [e for e in entries if "O" in e.composition and len(e.composition) > 1]
    halides = [e for e in entries if {"F", "Cl", "Br", "I"} & {el.symbol for el in e.composition} and len(e.composition) > 1]
    assert len(oxides) >= 1000 and len(halides) >= 500
    # deduplicated: a dropped duplicate is not there; every id once
    ids = [e.data["material_id"] for e in entries]
    assert len(ids) == len(set(ids))
    assert recipe["deduplication"]["dropped"] and not {d["material_id"] for d in recipe["deduplication"]["dropped"]} & set(ids)
    demo_elements = {s for a in ase.io.read(demo_data, ":") for s in a.get_chemical_symbols()}
    assert demo_elements <= terminal_elements_with_energy(reference)
    # what the build cost and what the hull is worth are on record
    assert recipe["relaxation_cpu_seconds"]["total"] > 0
    quality = recipe["hull_quality"]
    assert quality["compounds"] >= 900 and 0 < quality["energy_above_hull_mae_eV_per_atom"] < 0.2
    assert 0.5 < quality["f1"] <= 1


def test_recorded_hull_quality_is_what_the_reference_gives(tmp_path):
    """The recipe's MAE and F1 recomputed from the shipped file and the DFT sources alone."""
    from pymatgen.core import Structure

    from crygen.reference import load_reference
    from crygen.hull_quality import corrected_entry, hull_quality, mp_pairs
    from crygen.reference_build import plan
    from crygen.reference_sources import fetch_json
    from crygen.relaxation import correction_scheme
    from tests.helpers import DEMO_DATA

    reference, _ = load_reference("default")
    entries = list(reference)
    build_plan = plan(DEMO_DATA, tmp_path / "sources", compounds=False)  # elements and demo, with DFT energies
    by_id = {c.id: c for c in build_plan.candidates}
    pairs = [(corrected_entry(by_id[e.data["material_id"]].structure, e.data["dft_energy"],
                              correction_scheme("MP2020"), e.data["material_id"]), e)
             for e in entries if e.data.get("dft_energy") is not None]
    assert all(isinstance(by_id[e.data["material_id"]].structure, Structure) for _, e in pairs)
    pairs += mp_pairs(fetch_json("mp_calc_compounds", tmp_path / "sources"), entries)
    terminals = {p.composition.elements[0] for _, p in pairs if len(p.composition) == 1}
    again = hull_quality([(d, p) for d, p in pairs if set(d.composition.elements) <= terminals])
    assert again == _recipe()["hull_quality"]


def test_chgnet_energies_carry_mp2020_corrections_already(tmp_path):
    """Why the default corrects CHGNet energies with nothing: on the MP compounds whose MP2020
    correction is large (oxides, fluorides, transition-metal +U), CHGNet's relaxed energy sits
    by raw DFT + MP2020, far from raw DFT."""
    from crygen.reference import load_reference
    from crygen.hull_quality import mp_pairs
    from crygen.reference_sources import fetch_json

    reference, _ = load_reference("default")
    pairs = mp_pairs(fetch_json("mp_calc_compounds", tmp_path), list(reference))
    big = [(d, p) for d, p in pairs if abs(d.correction_per_atom) > 0.2]
    assert len(big) >= 30
    to_corrected = np.mean([abs(p.energy_per_atom - d.energy_per_atom) for d, p in big])
    to_raw = np.mean([abs(p.energy_per_atom - d.uncorrected_energy_per_atom) for d, p in big])
    assert to_corrected < 0.15 and to_raw > 3 * to_corrected, (to_corrected, to_raw)


def test_hull_quality_known_answers():
    """Li-O: DFT says Li2O and Li2O2 are on the hull and LiO3 0.3 eV/atom above; the potential
    lifts Li2O2 by 0.3 eV/atom (now above) and lowers LiO3 onto the hull."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.computed_entries import ComputedEntry

    from crygen.hull_quality import hull_quality

    dft = {"Li": 0.0, "O2": 0.0, "Li2O": -2.0 * 3, "Li2O2": -1.6 * 4}
    hull = PhaseDiagram([ComputedEntry(f, e) for f, e in dft.items()])
    li_o3 = hull.get_hull_energy_per_atom(ComputedEntry("LiO3", 0).composition)  # eV/atom on the DFT hull
    dft["LiO3"] = (li_o3 + 0.3) * 4
    ml = {**dft, "Li2O2": dft["Li2O2"] + 0.3 * 4, "LiO3": (li_o3 - 0.05) * 4}
    pairs = [(ComputedEntry(f, dft[f]), ComputedEntry(f, ml[f])) for f in dft]
    q = hull_quality(pairs)
    assert q["compounds"] == 3 and q["entries_in_each_hull"] == 5
    # Li2O2: on the DFT hull, above the potential's; LiO3: 0.3 above DFT's, on the potential's
    hull = PhaseDiagram([ComputedEntry(f, e) for f, e in dft.items()])
    e_ml = PhaseDiagram([ComputedEntry(f, e) for f, e in ml.items()])
    lio3_ml = e_ml.get_e_above_hull(ComputedEntry("LiO3", ml["LiO3"]), allow_negative=True)
    li2o2_ml = e_ml.get_e_above_hull(ComputedEntry("Li2O2", ml["Li2O2"]), allow_negative=True)
    li2o2_dft = hull.get_e_above_hull(ComputedEntry("Li2O2", dft["Li2O2"]), allow_negative=True)
    expected = (abs(li2o2_ml - li2o2_dft) + abs(lio3_ml - 0.3) + 0) / 3
    assert q["energy_above_hull_mae_eV_per_atom"] == pytest.approx(expected, abs=1e-4)
    assert li2o2_dft <= 0.1 < li2o2_ml and lio3_ml <= 0.1
    # DFT stable: Li2O, Li2O2; potential stable: Li2O, LiO3 -> precision 1/2, recall 1/2
    assert (q["dft_stable"], q["potential_stable"], q["both_stable"]) == (2, 2, 1)
    assert q["precision"] == q["recall"] == q["f1"] == 0.5
    # Li2O sits on both hulls (no error by construction): the off-hull MAE leaves it out
    assert q["off_hull_compounds"] == 2
    assert q["energy_above_hull_mae_off_hull_eV_per_atom"] == pytest.approx(expected * 3 / 2, abs=1e-4)
    assert q["by_source"]["?"]["compounds"] == 3 and q["by_source"]["?"]["f1"] == 0.5


def test_build_is_resumable_in_shares(tmp_path):
    """Two shares of a small build: the first writes its parts and no reference, the second
    completes it; a third run relaxes nothing; energies equal the default's for the same crystals."""
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer

    from crygen.reference import load_reference

    xyz = demo_subset(tmp_path / "three.extxyz", 3)
    out, work = tmp_path / "ref" / "small.gz", tmp_path / "work"
    args = ("--demo-data", xyz, "--out", out, "--work", work, "--needed-elements", "--no-compounds")
    first = run_stage("build_reference", *args, "--part", "1/2")
    assert "still to relax" in first.stdout + first.stderr and not out.exists()
    parts = sorted(work.glob("*/part-*.json.gz"))
    assert parts
    run_stage("build_reference", *args, "--part", "2/2")
    recipe = json.loads((tmp_path / "ref" / "small.json").read_text())
    small = LMDBGZSerializer().deserialize(str(out))
    assert len(small) == recipe["entries"] >= 3 and "matbench_dielectric" not in recipe["sources"]
    assert recipe["hull_quality"] is None  # measured only with the MP compounds
    assert 0 < recipe["relaxed_in_this_build"] < recipe["entries"] + len(recipe["excluded"])  # the second share only
    again = run_stage("build_reference", *args)
    assert json.loads((tmp_path / "ref" / "small.json").read_text())["relaxed_in_this_build"] == 0
    assert "0 relaxed now" in again.stdout + again.stderr
    # the recipe behind the default gives the default's energies for these crystals
    default, _ = load_reference("default")
    default_energy = {e.data["material_id"]: e.energy for e in default}
    shared = [e for e in small if e.data["material_id"] in default_energy]
    assert len(shared) >= 3
    for e in shared:
        assert e.energy == pytest.approx(default_energy[e.data["material_id"]], abs=2e-3 * e.composition.num_atoms)
    # a rebuild from the reference alone (its work folder gone) relaxes nothing either
    run_stage("build_reference", *args[:4], "--work", tmp_path / "fresh-work", *args[6:])
    assert json.loads((tmp_path / "ref" / "small.json").read_text())["relaxed_in_this_build"] == 0


def test_bad_part_and_damaged_part_are_one_line_errors(tmp_path):
    xyz = demo_subset(tmp_path / "one.extxyz", 1)
    args = ("--demo-data", xyz, "--out", tmp_path / "r.gz", "--work", tmp_path / "work")
    proc = run_stage("build_reference", *args, "--part", "3/2", check=False)
    assert proc.returncode == 2 and "--part '3/2': must be k/n" in error_line(proc)
    folder = tmp_path / "work" / "chgnet-x"
    folder.mkdir(parents=True)
    (folder / "part-0.json.gz").write_bytes(b"not gzip")
    from crygen.fileio import CrygenError
    from crygen.reference_build import read_parts

    with pytest.raises(CrygenError, match="unreadable part of the reference build"):
        read_parts(folder)


def test_make_reference_rejects_a_bad_part_before_anything_runs():
    from tests.helpers import make

    proc = make("reference", "PART=0/3", check=False)
    assert proc.returncode != 0 and "PART=0/3: must be k/n" in proc.stderr


@pytest.mark.slow
def test_embedded_models_crystals_stand_on_compounds_of_the_default_hull(tmp_path):
    """64 crystals from the embedded model (seed fixed), relaxed and placed on the default hull,
    against the same energies on a hull of its elements alone (what the old default mostly
    was): most verdicts now rest on compounds, so stability is reported, and far fewer crystals
    sit more than 0.1 eV/atom below the hull. (Issue 16 asks for at most 10 %; measured here:
    26 of 64, the rest in systems whose compounds no offline source holds; see the README.)"""
    import ase.io
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from pymatgen.io.ase import AseAtomsAdaptor

    from crygen.evaluation import evaluate
    from crygen.reference import load_reference
    from tests.helpers import BASE_MODEL

    results = tmp_path / "results"
    run_stage("generate", "--model", BASE_MODEL, "--out", results, "--num-gen", "64", "--seed", "42", "--device", "cpu")
    out = tmp_path / "eval"
    # two shards of one thread relax the 64 on both cores (CI's time); the metrics are computed
    # once on all of them, as one process would (test_shards)
    run_stage("evaluate_generated", "--results", results, "--out", out, "--shards", "2", "--threads", "1")
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert "withheld_metrics" not in summary
    support = summary["additional_metrics"]["hull_support"]
    assert support["on_elements_only"] <= 0.45 * support["verdicts"]  # measured 20 of 64

    relaxed = ase.io.read(out / "relaxed_structures.extxyz", ":")
    structures = [AseAtomsAdaptor.get_structure(a) for a in relaxed]
    energies = [a.info["energy"] if "energy" in a.info else a.get_potential_energy() for a in relaxed]
    default, _ = load_reference("default")
    elements_only = ReferenceDataset.from_entries("elements", [e for e in default if len(e.composition) == 1])

    def far_below(reference):
        table = evaluate(structures, reference, energies=energies, energy_correction="none").table
        values = [row["energy_above_hull_per_atom"] for row in table if row["energy_above_hull_per_atom"] is not None]
        assert len(values) >= 60
        return sum(v < -0.1 for v in values) / len(values)

    on_compounds, on_elements = far_below(default), far_below(elements_only)
    assert on_compounds <= 0.5 and on_compounds <= on_elements - 0.15, (on_compounds, on_elements)  # measured 0.41, 0.70
