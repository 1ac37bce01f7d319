"""crygen/reference.py and stages/build_reference.py: reference sets in MatterGen's format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import demo_subset, run_stage


def test_default_reference_covers_every_demo_element_with_mp2020_energies(demo_data):
    import ase.io

    from crygen.reference import DEFAULT_REFERENCE, load_reference, recipe_path, terminal_elements_with_energy

    reference, info = load_reference("default")
    recipe = json.loads(recipe_path(DEFAULT_REFERENCE).read_text())
    assert info["sha256"] == recipe["sha256"] and info["entries"] == recipe["entries"] == len(reference)
    assert recipe["sources"]["demo_data"]["sha256"] == "067b94bde28b2c88b57c3e38cab72bee7e551820b7eb3489eaf49d1595f538d2"
    assert recipe["potential"]["name"] == "chgnet" and "MaterialsProject2020" in recipe["correction"]
    demo_elements = {s for a in ase.io.read(demo_data, ":") for s in a.get_chemical_symbols()}
    assert demo_elements <= terminal_elements_with_energy(reference)
    entries = list(reference)
    assert all(np.isfinite(e.energy) for e in entries)
    # MP2020 was applied: oxides carry a (negative) anion correction
    oxides = [e for e in entries if "O" in e.composition and len(e.composition) > 1]
    assert oxides and any(e.correction < 0 for e in oxides)
    assert len(entries) >= 0.95 * recipe["sources"]["demo_data"]["structures"]


def test_build_reference_recipe_on_a_few_crystals(tmp_path):
    """The recipe behind the default, on 3 crystals and their elements; MatterGen reads the file."""
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer

    from crygen.reference import load_reference

    xyz = demo_subset(tmp_path / "three.extxyz", 3)
    out = tmp_path / "ref" / "small.gz"
    run_stage("build_reference", "--demo-data", xyz, "--out", out, "--needed-elements")
    small = LMDBGZSerializer().deserialize(str(out))
    recipe = json.loads((tmp_path / "ref" / "small.json").read_text())
    assert len(small) == recipe["entries"] >= 3
    ids = {e.data["material_id"] for e in small}
    assert any(i.startswith("mp-pbe-element:") for i in ids)
    assert recipe["relaxed_in_this_build"] == len(small) + len(recipe["excluded"])
    # a rebuild with the same potential and settings relaxes nothing again
    run_stage("build_reference", "--demo-data", xyz, "--out", out, "--needed-elements")
    again = json.loads((tmp_path / "ref" / "small.json").read_text())
    assert again["relaxed_in_this_build"] == 0 and again["entries"] == recipe["entries"]
    # the same recipe gave the default reference the same energies for these crystals
    default, _ = load_reference("default")
    default_energy = {e.data["material_id"]: e.energy for e in default}
    shared = [e for e in small if e.data["material_id"] in default_energy]
    assert len(shared) >= 3  # the 3 crystals at least: the check below is never empty
    for e in shared:
        assert e.energy == pytest.approx(default_energy[e.data["material_id"]], abs=2e-3 * e.composition.num_atoms)


def test_bad_reference_is_a_one_line_error(tmp_path):
    bad = tmp_path / "ref.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    demo = demo_subset(tmp_path / "one.extxyz", 1)
    proc = run_stage("evaluate_generated", "--results", demo, "--reference", bad, "--no-relax", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith(f"evaluate_generated: error: {bad}: not a MatterGen LMDB-gz reference")
    proc = run_stage("evaluate_generated", "--results", demo, "--reference", tmp_path / "none.gz", check=False)
    assert proc.returncode == 2 and "reference set not found" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "metrics.json").exists()


def test_training_set_joins_the_reference_without_copying_it():
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    from crygen.reference import terminal_elements_with_energy, with_training_set
    from tests.helpers import demo_structures

    structures = demo_structures(12)
    reference = ReferenceDataset.from_entries("ref", [
        ComputedStructureEntry(s, energy=-1.0 * len(s), data={"material_id": f"r{i}"}) for i, s in enumerate(structures[:8])])
    joined = with_training_set(reference, structures[4:])  # overlaps the reference on 4
    flat = ReferenceDataset.from_entries("flat", list(joined))
    assert len(joined) == len(flat) == 16
    for lookup in ("entries_by_chemsys", "entries_by_reduced_formula"):
        ours, theirs = getattr(joined, lookup), getattr(flat, lookup)
        assert set(ours) == set(theirs) and len(ours) == len(theirs)
        for key in theirs:
            assert key in ours
            assert [e.data["material_id"] for e in ours[key]] == [e.data["material_id"] for e in theirs[key]]
    assert "Xx" not in joined.entries_by_chemsys
    # training entries carry no energy: they never become a hull terminal
    assert terminal_elements_with_energy(joined) == terminal_elements_with_energy(reference)


def test_all_ordered_is_mattergens_is_ordered_without_decoding(tmp_path):
    """crygen reads order from the stored sites; MatterGen decodes every entry to ask it."""
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    from crygen.reference import all_ordered, load_reference, with_training_set
    from tests.helpers import demo_structures

    default, _ = load_reference("default")
    assert all_ordered(default) is True and "is_ordered" not in default.__dict__
    assert load_reference("default")[0].is_ordered is True  # MatterGen's answer, on a fresh copy
    structures = demo_structures(4)
    assert all_ordered(with_training_set(default, structures)) is True
    for occupancy in (0.5, 1.0):  # partial occupancy; one species at occupancy 1 stored as a mixture
        mixed = structures[0].copy()
        other = "Cs" if "Cs" not in structures[0].composition else "Rb"
        mixed.replace_species({mixed[0].specie.symbol: {mixed[0].specie.symbol: occupancy, other: 1 - occupancy}})
        entries = [ComputedStructureEntry(s, energy=-1.0, data={"material_id": f"m{i}"})
                   for i, s in enumerate([*structures[1:], mixed])]
        path = tmp_path / f"mixed{occupancy}.gz"
        LMDBGZSerializer().serialize(ReferenceDataset.from_entries("mixed", entries), path)
        stored = LMDBGZSerializer().deserialize(str(path))
        assert all_ordered(stored) is LMDBGZSerializer().deserialize(str(path)).is_ordered is mixed.is_ordered
        assert all_ordered(with_training_set(default, [mixed])) is mixed.is_ordered
