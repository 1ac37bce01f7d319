"""crygen/reference.py: reading reference sets in MatterGen's format (building them:
test_reference_build.py)."""

from __future__ import annotations

from tests.helpers import demo_subset, run_stage


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
