"""stages/evaluate_generated.py and crygen/evaluation.py: MatterGen's metrics, offline."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.helpers import cif, demo_structures, error_line, run_stage


def cif_folder(tmp_path, n=6):
    folder = tmp_path / "cifs"
    folder.mkdir()
    structures = demo_structures(n, start=100)
    structures.append(structures[0].copy())  # a duplicate: uniqueness must see it
    for i, s in enumerate(structures):
        s.to(filename=str(folder / f"s{i}.cif"))
    (folder / "overlap.cif").write_text(cif(["Na", "Cl"], [(0, 0, 0), (0.02, 0, 0)], name="ov"))
    return folder, len(structures) + 1


@pytest.fixture(scope="module")
def default_reference():
    from crygen.reference import load_reference

    return load_reference("default")[0]


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_structure_metrics_equal_mattergens_evaluator(tmp_path, small_dataset, default_reference):
    from crygen.evaluation import mattergen_metrics, training_structures
    from crygen.reference import with_training_set
    from crygen.structures import read_structures

    folder, n = cif_folder(tmp_path)
    out = tmp_path / "eval"
    run_stage("evaluate_generated", "--results", folder, "--training-data", small_dataset, "--no-relax", "--out", out)
    ours = json.loads((out / "metrics.json").read_text())
    reference = with_training_set(default_reference, training_structures(small_dataset))
    theirs = mattergen_metrics(read_structures(folder), reference)
    assert ours == theirs
    assert ours["avg_structure_validity"] == (n - 1) / n  # the overlapping pair
    assert ours["frac_unique_structures"] == (n - 1) / n  # the duplicate
    assert ours["frac_novel_structures"] < 1.0  # demo crystals are in the reference
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["count"] == n and summary["relaxed"] is False and summary["metrics"] == ours
    assert summary["reference"]["sha256"] and "training set" in summary["definitions"]["novelty_against"]
    rows = read_table(out / "per_structure.csv")
    assert len(rows) == n and {"formula", "chemical_system", "structure_validity", "unique", "novel"} <= set(rows[0])


def test_relaxed_metrics_equal_mattergens_evaluator_on_the_same_energies(default_reference):
    """Energies above hull, stability and S.U.N. as MatterGen computes them (MP2020 included)."""
    from crygen.evaluation import evaluate, mattergen_metrics
    from crygen.relaxation import load_potential, relax

    structures = demo_structures(5, start=200)
    relaxed = relax(structures, load_potential("chgnet"))
    final = [r.structure for r in relaxed]
    energies = [r.energy for r in relaxed]
    ours = evaluate(final, default_reference, energies=energies, original_structures=structures)
    theirs = mattergen_metrics(final, default_reference, energies=energies, original_structures=structures)
    assert ours.metrics == theirs
    for key in ("frac_stable_structures", "avg_energy_above_hull_per_atom", "frac_novel_unique_stable_structures",
                "avg_rmsd_from_relaxation"):
        assert key in ours.metrics
    assert ours.additional["covered_by_reference"] == 5 and ours.additional["energy_metrics_over"] == 5
    # the reference holds these crystals relaxed by the same recipe from the same start: each
    # lands on its own entry (same MP2020-corrected energy), so it is neither novel nor below
    # the hull that entry helps span
    entries = {e.data["material_id"]: e for e in default_reference}
    for row, s in zip(ours.table, structures):
        twin = entries[s.properties["alexandria_id"]]
        assert row["energy_per_atom"] == pytest.approx(twin.energy_per_atom, abs=1e-3)
        assert row["energy_above_hull_per_atom"] > -1e-3
    assert ours.metrics["frac_novel_structures"] == 0.0


def test_uncovered_chemical_system_has_unknown_energy_above_hull(default_reference):
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset

    from crygen.evaluation import evaluate
    from crygen.relaxation import load_potential, relax

    structures = demo_structures(3, start=300)
    lost = structures[0].composition.elements[0].symbol
    reference = ReferenceDataset.from_entries(
        "without " + lost, [e for e in default_reference if lost not in e.composition])
    relaxed = relax(structures, load_potential("chgnet"))
    result = evaluate([r.structure for r in relaxed], reference, energies=[r.energy for r in relaxed],
                      original_structures=structures)
    uncovered = [i for i, s in enumerate(structures) if lost in s.composition]
    assert result.additional["covered_by_reference"] == 3 - len(uncovered)
    assert structures[0].composition.chemical_system in result.uncovered_systems
    for i, row in enumerate(result.table):
        assert row["covered_by_reference"] is (i not in uncovered)
        assert (row["energy_above_hull_per_atom"] is None) is (i in uncovered)
    if len(uncovered) < 3:  # energy metrics over the covered rest
        assert "frac_stable_structures" in result.metrics
        assert result.additional["energy_metrics_over"] == 3 - len(uncovered)


def test_eval_gen_relaxes_writes_every_output_and_reuses_by_hash(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, s in enumerate(demo_structures(3, start=50)):
        s.scale_lattice(s.volume * 0.95)
        s.to(filename=str(folder / f"g{i}.cif"))
    out = tmp_path / "eval"
    run_stage("evaluate_generated", "--results", folder, "--out", out)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["relaxed"] is True and summary["count"] == 3
    assert summary["potential"]["name"] == "chgnet" and summary["potential"]["weights_sha256"]
    assert summary["definitions"]["stability_threshold_eV_per_atom"] == 0.1
    assert summary["definitions"]["strict_stability_threshold_eV_per_atom"] == 0.0
    assert "frac_stable_structures_strict" in summary["additional_metrics"]
    rows = read_table(out / "per_structure.csv")
    assert {"energy_above_hull_per_atom", "stable", "stable_strict", "rmsd_from_relaxation", "relax_steps",
            "covered_by_reference", "sun"} <= set(rows[0])
    assert all(float(r["rmsd_from_relaxation"]) >= 0 for r in rows)
    import ase.io

    frames = ase.io.read(out / "relaxed_structures.extxyz", ":")
    assert len(frames) == 3 and all(np.isfinite(a.get_potential_energy()) for a in frames)

    proc = run_stage("evaluate_generated", "--results", folder, "--out", out)
    assert "is up to date" in proc.stdout
    proc = run_stage("evaluate_generated", "--results", folder, "--out", out, "--no-relax")
    assert "is up to date" not in proc.stdout
    assert json.loads((out / "metrics_summary.json").read_text())["relaxed"] is False
    (folder / "g0.cif").unlink()
    proc = run_stage("evaluate_generated", "--results", folder, "--out", out, "--no-relax")
    assert "is up to date" not in proc.stdout
    assert json.loads((out / "metrics_summary.json").read_text())["count"] == 2


def test_failure_is_an_error_alone_and_recorded_in_the_pipeline(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_stage("evaluate_generated", "--results", empty, check=False)
    assert proc.returncode == 2
    assert error_line(proc) == f"evaluate_generated: error: {empty}: folder holds no .cif files (nor train.csv + val.csv)"
    failed = tmp_path / "EVALUATION_FAILED.txt"
    proc = run_stage("evaluate_generated", "--results", empty, "--failure-file", failed)
    assert proc.returncode == 0 and "folder holds no .cif files" in failed.read_text()


def matcher_cases():
    """Real demo crystals with variants on both sides of MatterGen's matcher tolerances: small and
    large perturbations (stol 0.3), anisotropic strains (ltol 0.2), supercells, oxidation states,
    two substitutable elements trading sites in a supercell (the ordered match fails, the
    Hume-Rothery disordered one may not), and a disordered variant."""
    from mattergen.evaluation.utils.structure_matcher import check_is_disordered

    np.random.seed(0)  # Structure.perturb draws from numpy's global generator
    base = demo_structures(60, start=400)
    substitutable = [s for s in base if len(s) <= 6 and check_is_disordered(s)[0]][:3]
    plain = [s for s in base if len(s) <= 6 and not check_is_disordered(s)[0]][:2]
    out = []
    for s in substitutable + plain:
        group = [s]
        for d in (0.02, 0.2 * (s.volume / len(s)) ** (1 / 3), 0.3 * (s.volume / len(s)) ** (1 / 3)):
            group.append(s.copy().perturb(d))
        for e in (0.15, 0.25):
            group.append(s.copy().apply_strain([e, 0, 0]))
        group.append(s * (2, 1, 1))
        group.append(s.copy().add_oxidation_state_by_guess())
        ok, cliques = check_is_disordered(s)
        if ok:
            a, b = (str(e) for e in cliques[0][:2])
            w = s * (2, 1, 1)
            ia = next(i for i, site in enumerate(w) if site.specie.symbol == a)
            ib = next(i for i, site in enumerate(w) if site.specie.symbol == b)
            w.replace(ia, b, w[ia].frac_coords)
            w.replace(ib, a, w[ib].frac_coords)
            group.append(w)
            group.append(s.copy().replace_species({a: {a: 0.5, b: 0.5}}))
        out += group
    return out


def test_prepared_matcher_decides_every_pair_as_mattergens_matcher():
    """crygen's matcher (each structure reduced once, not once per pair) against MatterGen's
    DefaultDisorderedStructureMatcher on every ordered pair of real structures, both orders."""
    import itertools
    from collections import Counter

    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    from crygen.evaluation import PreparedMatcher

    structures = matcher_cases()
    theirs = DefaultDisorderedStructureMatcher()
    ours = PreparedMatcher()
    prepared = [ours.prepare(s) for s in structures]
    seen = Counter()
    disordered_fit = ours.disordered_matcher.fit

    def counted(a, b):
        result = disordered_fit(a, b)
        seen[("disordered", a.is_ordered and b.is_ordered, result)] += 1
        return result

    ours.disordered_matcher.fit = counted
    for i, j in itertools.product(range(len(structures)), repeat=2):
        expected = theirs.fit(structures[i], structures[j])
        assert ours.fit(prepared[i], prepared[j]) == expected, (i, j)
        if i != j and structures[i].composition.reduced_formula == structures[j].composition.reduced_formula:
            seen[("same formula", expected)] += 1
    # the cases cover matches and near-misses, and both outcomes of the disordered fallback
    assert seen[("same formula", True)] > 100 and seen[("same formula", False)] > 50
    assert seen[("disordered", False, True)] and seen[("disordered", False, False)]


def test_near_misses_give_mattergens_values_with_a_cold_and_a_warm_store(default_reference, tmp_path, monkeypatch):
    """The whole evaluation on ordered near-misses against a reference holding some originals,
    with the reference's reduced forms computed (cold store) and read back (warm store)."""
    import sqlite3

    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    from crygen.evaluation import evaluate, mattergen_metrics
    from crygen.reference import with_training_set

    store = tmp_path / "reduced_forms.sqlite"
    monkeypatch.setenv("CRYGEN_REDUCED_FORMS", str(store))
    structures = [s for s in matcher_cases() if s.is_ordered]
    originals = ReferenceDataset.from_entries("originals", [
        ComputedStructureEntry(s, energy=-len(s), data={"material_id": f"o{i}"}) for i, s in enumerate(structures[::9])])
    for reference in (originals, with_training_set(default_reference, structures[1::9])):
        theirs = mattergen_metrics(structures, reference)
        assert 0 < theirs["frac_unique_structures"] < 1 and 0 < theirs["frac_novel_structures"] < 1
        assert evaluate(structures, reference).metrics == theirs  # cold
        assert evaluate(structures, reference).metrics == theirs  # warm
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM reduced").fetchone()[0] > 0


def test_reduced_form_store_gives_back_what_pymatgen_computes(tmp_path):
    from crygen.evaluation import ReducedFormStore, _reduced_form

    structures = demo_structures(6)
    moved = structures[0].copy()
    moved.translate_sites([0], [1e-15, 0, 0])  # a different structure, however slightly
    for _ in range(2):  # fill the store, then read from it
        store = ReducedFormStore(tmp_path / "store.sqlite")
        for s in [*structures, moved]:
            ours, theirs = store.reduced_form(s), _reduced_form(s)
            assert type(ours) is type(theirs) and ours.lattice.matrix.tobytes() == theirs.lattice.matrix.tobytes()
            assert ours.frac_coords.tobytes() == theirs.frac_coords.tobytes()
            assert ours.species_and_occu == theirs.species_and_occu and ours.labels == theirs.labels
        store.close()
    assert ReducedFormStore.key(moved) != ReducedFormStore.key(structures[0])
    assert ReducedFormStore(None).reduced_form(moved).frac_coords.tobytes() == _reduced_form(moved).frac_coords.tobytes()


def _same(a, b, shared, path="entry"):
    """``a`` and ``b`` hold the same values, types and all, bit for bit; ``shared`` collects the
    objects ``b`` shares with the original (mutable ones must not be)."""
    import types

    assert type(a) is type(b), path
    if isinstance(a, (types.MethodType, types.FunctionType)):  # e.g. of an ASE calculator kept on the structure
        assert getattr(a, "__func__", a) is getattr(b, "__func__", b), path
        return
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    elif isinstance(a, float):
        assert repr(a) == repr(b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], shared, f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, shared, f"{path}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        _same(vars(a), vars(b), shared, f"{path}.__dict__")
    else:
        assert a == b, path
    shared.append(b)


def test_dataset_copies_are_mattergens_deep_copies():
    """crygen's copy of the capability's dataset (pickled) against MatterGen's (deepcopy): the
    same entries, attribute by attribute, and no mutable object shared with the caller's."""
    import enum
    from types import SimpleNamespace

    from mattergen.evaluation.metrics.core import BaseMetricsCapability
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary

    from crygen.evaluation import _dataset

    structures = demo_structures(6)
    structures[1].add_oxidation_state_by_guess()
    structures[2].add_site_property("magmom", [0.5] * len(structures[2]))
    structures[3].properties["material_id"] = "x"
    summaries = [MetricsStructureSummary.from_structure(s) for s in structures]
    summaries.append(MetricsStructureSummary.from_structure_and_energy(structures[0], -3.25))
    capability = SimpleNamespace(_structure_summaries=summaries)  # all that the dataset reads
    theirs = list(BaseMetricsCapability.dataset.func(capability))
    ours = list(_dataset(capability))
    assert [e.entry_id for e in ours] == list(range(len(summaries)))
    for s, a, b in zip(summaries, theirs, ours):
        shared: list = []
        _same(a, b, shared)
        originals = []
        _same(s.entry, s.entry, originals)
        immutable = (str, int, float, type(None), tuple, np.generic, enum.Enum)  # Element is an Enum
        mutable = {id(x) for x in originals if not isinstance(x, immutable)}
        assert not [x for x in shared if id(x) in mutable]
