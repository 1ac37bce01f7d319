"""stages/evaluate_generated.py and crygen/evaluation/ (metrics, records, folder): MatterGen's metrics,
offline. Pair matching: tests/test_evaluation_matching.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.helpers import cif, demo_structures, error_line, run_stage


def _default_sha() -> str:
    from crygen.reference import DEFAULT_REFERENCE, recipe_path

    return json.loads(recipe_path(DEFAULT_REFERENCE).read_text())["sha256"]


DEFAULT_SHA = _default_sha()


def cif_folder(tmp_path, n=6):
    folder = tmp_path / "cifs"
    folder.mkdir()
    structures = demo_structures(n, start=100)
    structures.append(structures[0].copy())  # a duplicate: uniqueness must see it
    for i, s in enumerate(structures):
        s.to(filename=str(folder / f"s{i}.cif"))
    (folder / "overlap.cif").write_text(cif(["Na", "Cl"], [(0, 0, 0), (0.02, 0, 0)], name="ov"))
    return folder, len(structures) + 1


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
    """Energies above hull, stability and S.U.N. as MatterGen computes them, with either
    correction crygen applies (none for CHGNet, MP2020 for MatterSim)."""
    from crygen.evaluation import evaluate, mattergen_metrics
    from crygen.relaxation import energy_correction, load_potential, relax

    # five demo intermetallics and two MP oxides of the reference (where MP2020 corrects)
    oxides = [e for e in default_reference if e.data["source"] == "matbench_dielectric"
              and "O" in e.composition and e.composition.num_atoms <= 8][:2]
    structures = demo_structures(5, start=200) + [e.structure.copy() for e in oxides]
    relaxed = relax(structures, load_potential("chgnet"))
    final = [r.structure for r in relaxed]
    energies = [r.energy for r in relaxed]
    hulls = {}
    for correction in ("MP2020", "none"):
        ours = evaluate(final, default_reference, energies=energies, original_structures=structures,
                        energy_correction=correction)
        theirs = mattergen_metrics(final, default_reference, energies=energies, original_structures=structures,
                                   energy_correction=correction)
        assert ours.metrics == theirs
        hulls[correction] = [row["energy_above_hull_per_atom"] for row in ours.table]
    assert all(hulls["MP2020"][i] < hulls["none"][i] - 0.1 for i in (5, 6))  # the oxides' anion correction
    assert correction == energy_correction("chgnet")  # the one checked further
    for key in ("frac_stable_structures", "avg_energy_above_hull_per_atom", "frac_novel_unique_stable_structures",
                "avg_rmsd_from_relaxation"):
        assert key in ours.metrics
    assert ours.additional["covered_by_reference"] == 7 and ours.additional["energy_metrics_over"] == 7
    # the reference holds these crystals relaxed by the same recipe from the same start: each
    # lands on its own entry (same energy, corrected alike), so it is neither novel nor below
    # the hull that entry helps span
    entries = {e.data["material_id"]: e for e in default_reference}
    twins = [entries[s.properties["alexandria_id"]] for s in structures[:5]] + oxides
    for row, twin in zip(ours.table, twins):
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
    assert len(uncovered) == 1  # (RbGe3P loses P; RbHfNb2As and RbHfTl2 keep their hulls)
    # energy metrics over the covered rest
    assert "frac_stable_structures" in result.metrics
    assert result.additional["energy_metrics_over"] == 2


def test_eval_gen_relaxes_writes_every_output_and_reuses_by_hash(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, s in enumerate(demo_structures(3, start=52)):  # C2IF2, Ca2YMgPt, Ca3BrCl: each settles in < 50 steps
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
    # demo crystals: the reference holds their own entries, so every hull has compounds of
    # the structure's system and stability is reported as plain numbers
    assert summary["additional_metrics"]["hull_support"]["with_compounds_in_own_system"] == 3
    assert "withheld_metrics" not in summary and "frac_stable_structures" in summary["metrics"]
    rows = read_table(out / "per_structure.csv")
    assert {"energy_above_hull_per_atom", "stable", "stable_strict", "rmsd_from_relaxation", "relax_steps",
            "covered_by_reference", "sun"} <= set(rows[0])
    assert all(float(r["rmsd_from_relaxation"]) >= 0 for r in rows)
    import ase.io

    frames = ase.io.read(out / "relaxed_structures.extxyz", ":")
    assert len(frames) == 3 and all(np.isfinite(a.get_potential_energy()) for a in frames)

    proc = run_stage("evaluate_generated", "--results", folder, "--out", out)
    assert "is up to date" in proc.stderr
    proc = run_stage("evaluate_generated", "--results", folder, "--out", out, "--no-relax")
    assert "is up to date" not in proc.stderr
    assert json.loads((out / "metrics_summary.json").read_text())["relaxed"] is False
    (folder / "g0.cif").unlink()
    proc = run_stage("evaluate_generated", "--results", folder, "--out", out, "--no-relax")
    assert "is up to date" not in proc.stderr
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


ROCK_SALTS = {"NaCl": ("Na", "Cl", 5.6), "CsF": ("Cs", "F", 6.0), "CsI": ("Cs", "I", 7.4), "SmSe": ("Sm", "Se", 6.2)}
UNCOVERED_ROCK_SALTS = ("CsF", "CsI", "SmSe")


def rock_salt_cifs(folder, names=UNCOVERED_ROCK_SALTS):
    """Rock-salt binaries (NaCl, or by default three whose systems hold no compound in the
    default reference, so their hulls are their elements alone). They relax in a few steps."""
    from pymatgen.core import Lattice, Structure

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        a, b, lattice = ROCK_SALTS[name]
        s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
        s.get_primitive_structure().to(filename=str(folder / f"{name}.cif"))
    return folder


def support_by_brute_force(reference, chemical_system):
    """Entries with an energy whose elements lie in ``chemical_system``, by kind (every entry read)."""
    elements = set(chemical_system.split("-"))
    out = {"hull_compounds_in_system": 0, "hull_compounds_in_subsystems": 0, "hull_elemental_entries": 0}
    for e in reference:
        own = {el.symbol for el in e.composition.elements}
        if np.isfinite(e.energy) and own <= elements:
            kind = ("hull_elemental_entries" if len(own) == 1 else
                    "hull_compounds_in_system" if own == elements else "hull_compounds_in_subsystems")
            out[kind] += 1
    return out


def test_each_hull_says_what_it_stands_on_and_stability_on_elements_alone_is_withheld(tmp_path, default_reference):
    """Issue 15 item 6 on the default reference: three rock salts whose hulls hold only their
    elements (each lands far below them) and a demo crystal that has compounds of its system."""
    folder = rock_salt_cifs(tmp_path / "cifs")
    demo = demo_structures(1, start=51)[0]  # BPtNF2: its own entry is in the reference, relaxes in ~30 steps
    demo.to(filename=str(folder / "demo.cif"))
    proc = run_stage("evaluate_generated", "--results", folder)
    outs = list((folder / "evaluations").iterdir())
    assert [o.name for o in outs] == [f"relaxed-chgnet-d14ab7c0_reference_chgnet-{DEFAULT_SHA[:8]}"]  # named by its settings
    out = outs[0]
    rows = {r["name"]: r for r in read_table(out / "per_structure.csv")}
    for name, row in rows.items():
        expected = support_by_brute_force(default_reference, row["chemical_system"])
        assert {k: int(row[k]) for k in expected} == expected, name
        assert row["hull_elements_only"] == str(name != "demo.cif")
    assert int(rows["demo.cif"]["hull_compounds_in_system"]) >= 1
    summary = json.loads((out / "metrics_summary.json").read_text())
    support = summary["additional_metrics"]["hull_support"]
    assert (support["verdicts"], support["on_elements_only"], support["with_compounds_in_own_system"]) == (4, 3, 1)
    assert support["fraction_on_elements_only"] == 0.75
    # most verdicts rest on elements only: no plain stability number anywhere
    withheld = summary["withheld_metrics"]
    assert withheld["reason"].startswith("3 of 4 stability verdicts rest on a hull with no reference compound")
    for key in ("frac_stable_structures", "frac_novel_unique_stable_structures", "avg_energy_above_hull_per_atom"):
        assert key in withheld["metrics"] and key not in summary["metrics"]
    assert withheld["metrics"]["frac_stable_structures"] == 0.75  # MatterGen's value: the rock salts look stable
    assert set(withheld["additional_metrics"]) == {"frac_stable_structures_strict",
                                                   "frac_novel_unique_stable_structures_strict"}
    assert json.loads((out / "metrics.json").read_text()) == summary["metrics"]
    assert "evaluate_generated: stability withheld: 3 of 4" in proc.stderr
    # the summary, written last, names every other output by content
    from crygen.fileio import sha256_file

    assert summary["outputs"] == {name: sha256_file(out / name)
                                  for name in ("per_structure.csv", "metrics.json", "relaxed_structures.extxyz")}
    assert summary["validity_over_drawn_samples"]["drawn"] is None
    assert summary["validity_over_drawn_samples"]["denominator"].startswith("the 4 structures given")
    # the evaluation folder inside the CIF folder is not one of its structures
    proc = run_stage("evaluate_generated", "--results", folder, "--no-relax")
    assert (folder / "evaluations" / f"unrelaxed_reference_chgnet-{DEFAULT_SHA[:8]}" / "metrics_summary.json").is_file()
    assert "is up to date" in run_stage("evaluate_generated", "--results", folder).stderr


def fake_reference(tmp_path, potential):
    """A copy of the default reference whose recipe records ``potential`` (None: no recipe)."""
    import shutil

    from crygen.reference import DEFAULT_REFERENCE, recipe_path

    path = tmp_path / "ref" / "mine.gz"
    path.parent.mkdir(parents=True)
    shutil.copy(DEFAULT_REFERENCE, path)
    if potential is not None:
        recipe = json.loads(recipe_path(DEFAULT_REFERENCE).read_text())
        recipe["potential"] = potential
        recipe_path(path).write_text(json.dumps(recipe))
    return path


def test_a_potential_other_than_the_references_is_refused_unless_allowed(tmp_path):
    from crygen.reference import check_potential
    from crygen.relaxation import potential_identity
    from tests.helpers import make

    mattersim = {"name": "mattersim", "weights": "mattersim-v1.0.0-1M.pth", "weights_sha256": "0" * 64}
    reference = fake_reference(tmp_path, mattersim)
    folder = rock_salt_cifs(tmp_path / "cifs", ["NaCl"])
    out = tmp_path / "eval"
    proc = run_stage("evaluate_generated", "--results", folder, "--reference", reference, "--out", out, check=False)
    assert proc.returncode == 2
    assert error_line(proc) == (
        f"evaluate_generated: error: {reference}: built with mattersim (mattersim-v1.0.0-1M.pth) but POTENTIAL is "
        f"chgnet (chgnet_0.3.0_e29f68s314m37.pth.tar); energies of two potentials on one hull are not comparable "
        f"(set POTENTIAL=mattersim, or ALLOW_POTENTIAL_MISMATCH=1 / --allow-potential-mismatch to go on, recorded)")
    assert not out.exists()
    # the pipeline records an evaluation failure and goes on; a settings error stops it
    proc = run_stage("evaluate_generated", "--results", folder, "--reference", reference, "--out", out,
                     "--failure-file", tmp_path / "FAILED.txt", check=False)
    assert proc.returncode == 2 and not (tmp_path / "FAILED.txt").exists()
    # allowed: evaluated, and the mismatch recorded and said
    proc = run_stage("evaluate_generated", "--results", folder, "--reference", reference, "--out", out,
                     "--allow-potential-mismatch")
    check = json.loads((out / "metrics_summary.json").read_text())["potential_check"]
    assert check["status"].startswith("MISMATCH") and check["reference_potential"] == mattersim
    assert check["evaluation_potential"]["name"] == "chgnet" and "not comparable" in check["problem"]
    assert "potential mismatch allowed and recorded" in proc.stderr
    # the Makefile passes ALLOW_POTENTIAL_MISMATCH=1 to the stage
    plan = make("-n", "eval-gen", f"RESULTS={folder}", "ALLOW_POTENTIAL_MISMATCH=1").stdout
    assert "--allow-potential-mismatch" in plan
    assert "--allow-potential-mismatch" not in make("-n", "eval-gen", f"RESULTS={folder}").stdout
    # a reference that records no potential (a DFT release) is taken as DFT, as MatterGen does
    chgnet = potential_identity("chgnet")
    dft = check_potential(fake_reference(tmp_path / "dft", None), chgnet)
    assert dft["reference_potential"] is None and dft["status"].startswith("reference records no potential")
    assert check_potential(reference.with_name("absent.gz"), chgnet)["status"].startswith("reference records no")
    from crygen.reference import DEFAULT_REFERENCE

    assert check_potential(DEFAULT_REFERENCE, chgnet)["status"] == "same potential"


def test_a_reference_corrected_otherwise_than_the_potential_needs_is_refused(tmp_path):
    """A reference an older crygen built (CHGNet energies corrected with MP2020 a second time)
    cannot take today's uncorrected CHGNet energies: refused, or recorded when allowed."""
    from crygen.fileio import CrygenError
    from crygen.reference import check_potential, recipe_path
    from crygen.relaxation import potential_identity

    chgnet = potential_identity("chgnet")
    reference = fake_reference(tmp_path, chgnet)
    recipe = json.loads(recipe_path(reference).read_text())
    recipe["correction"] = "MaterialsProject2020Compatibility (via MatterGen's VasprunLike)"  # how it was written
    recipe_path(reference).write_text(json.dumps(recipe))
    with pytest.raises(CrygenError, match="entries corrected with 'MP2020' but chgnet's energies need 'none'"):
        check_potential(reference, chgnet)
    allowed = check_potential(reference, chgnet, allow_mismatch=True)
    assert allowed["status"].startswith("MISMATCH") and allowed["reference_correction"] == "MP2020"


def pipeline_like_run(tmp_path, small_dataset, samples):
    """A run folder as `make pipeline RELAX=0` leaves it, without the models: data/, the
    validation metrics, and generation/results with 3 crystals and generation.json."""
    import shutil

    from tests.helpers import demo_subset

    run = tmp_path / "run"
    shutil.copytree(small_dataset, run / "data")
    results = run / "generation" / "results"
    results.mkdir(parents=True)
    demo_subset(results / "generated_crystals.extxyz", 3, start=20)
    (results / "generation.json").write_text(json.dumps({"seed": 1, "device": "cpu", "samples": samples}))
    (run / "evaluation").mkdir()
    loss = {"loss": 1.0}
    (run / "evaluation" / "metrics.json").write_text(json.dumps(
        {"baseline": loss, "finetuned": loss, "delta": {"loss": 0.0}, "delta_ci95": {"loss": [-0.1, 0.1]}}))
    return run


def test_an_evaluation_with_other_settings_never_passes_for_the_pipelines(tmp_path, small_dataset):
    """Issue 15 item 7: `make eval-gen RELAX=0` on a pipeline's results writes beside them, and
    summarize refuses an evaluation whose recorded settings are not the run's."""
    import shutil

    from tests.helpers import make

    samples = {"drawn": 5, "written": 3, "failed_sanity_check": 1, "lost_in_failed_batches": 1, "failed_batches": [3]}
    run = pipeline_like_run(tmp_path, small_dataset, samples)
    results = run / "generation" / "results"
    make("eval-gen", f"RESULTS={results}", "RELAX=0", f"REFERENCE_DATA={run / 'data'}", f"OUT={run}")
    assert not (results / "metrics_summary.json").exists()  # the pipeline's place is left alone
    assert not (run / "timings" / "evaluate_generated.json").exists()  # nor the timing its summary reads
    assert (results / "logs" / "evaluate_generated.log").is_file()  # its log beside what it evaluated
    (own,) = (results / "evaluations").iterdir()
    assert own.name == f"unrelaxed_reference_chgnet-{DEFAULT_SHA[:8]}"
    summary = json.loads((own / "metrics_summary.json").read_text())
    # item 5: validity over every drawn sample, beside MatterGen's over the written ones
    validity = summary["validity_over_drawn_samples"]
    assert {k: validity[k] for k in ("drawn", "written", "failed_sanity_check", "lost_in_failed_batches")} == {
        "drawn": 5, "written": 3, "failed_sanity_check": 1, "lost_in_failed_batches": 1}
    assert validity["frac_structure_validity_over_drawn"] == validity["valid"]["structure_validity"] / 5
    assert summary["metrics"]["avg_structure_validity"] == validity["valid"]["structure_validity"] / 3
    assert "all 5 drawn samples" in validity["denominator"]

    # put where the pipeline's own evaluation goes (EVAL_OUT=<results>, or by hand): refused
    for name in ("metrics.json", "per_structure.csv", "metrics_summary.json"):
        shutil.copy(own / name, results / name)
    def settings(relax):  # the run's settings as the Makefile hands them over (crygen/settings.py)
        path = tmp_path / f"settings-{relax}.json"
        path.write_text(json.dumps({"RELAX": relax, "POTENTIAL": "chgnet", "REFERENCE": "default", "SEED": 1}))
        return path

    proc = run_stage("summarize", "--run-dir", run, "--settings", settings(True), check=False)
    assert proc.returncode == 2
    assert error_line(proc) == (
        f"summarize: error: {results / 'metrics_summary.json'}: not this run's evaluation: its energy_correction, fmax, max_steps, "
        f"potential, relaxed differ from the run's (RELAX=True POTENTIAL=chgnet REFERENCE=default); remove it and "
        f"run make pipeline again")
    assert not (run / "summary.json").exists()
    # the run's settings: accepted, and summary.json says which settings made it
    run_stage("summarize", "--run-dir", run, "--settings", settings(False))
    generation_eval = json.loads((run / "summary.json").read_text())["generation_eval"]
    assert generation_eval["settings"]["relaxed"] is False and generation_eval["validity_over_drawn_samples"]["drawn"] == 5
    # the structures changed since: no longer the run's evaluation
    (results / "generated_crystals.extxyz").write_text((results / "generated_crystals.extxyz").read_text() + "\n")
    proc = run_stage("summarize", "--run-dir", run, "--settings", settings(False), check=False)
    assert proc.returncode == 2 and "its structures_sha256 differ" in error_line(proc)


def test_sample_accounting_that_does_not_add_up_is_a_one_line_error(tmp_path, small_dataset):
    run = pipeline_like_run(tmp_path, small_dataset, {"drawn": 5, "written": 2, "failed_sanity_check": 1,
                                                      "lost_in_failed_batches": 2, "failed_batches": []})
    results = run / "generation" / "results"
    proc = run_stage("evaluate_generated", "--results", results, "--no-relax", check=False)
    assert proc.returncode == 2
    assert error_line(proc) == (f"evaluate_generated: error: {results / 'generation.json'}: 'samples' says 2 written, "
                                f"the results hold 3 structures (mixed outputs of two generations?)")


def test_corrupt_generation_json_and_disordered_cifs_are_one_line_errors_with_relaxation(tmp_path):
    """Issue 15 item 9, through `make eval-gen` with relaxation: no traceback, the file named."""
    from tests.helpers import demo_subset, make

    results = tmp_path / "results"
    results.mkdir()
    demo_subset(results / "generated_crystals.extxyz", 2)
    (results / "generation.json").write_text('{"seed": 1, "samples": {"drawn": ')  # cut short
    proc = make("eval-gen", f"RESULTS={results}", "RELAX=1", f"OUT={tmp_path / 'run'}", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert error_line(proc).startswith(f"evaluate_generated: error: {results / 'generation.json'}: not valid JSON")

    folder = rock_salt_cifs(tmp_path / "cifs", ["NaCl"])
    from pymatgen.core import Lattice, Structure

    half = Structure(Lattice.cubic(4.0), [{"Na": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # a partial occupancy
    half.to(filename=str(folder / "mixed.cif"))
    proc = make("eval-gen", f"RESULTS={folder}", "RELAX=1", f"OUT={tmp_path / 'run'}", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert error_line(proc) == (
        f"evaluate_generated: error: {folder / 'mixed.cif'}: 1 of 2 structures disordered (partial occupancies; "
        f"first: mixed.cif): relaxation needs ordered structures; RELAX=0 (--no-relax) evaluates them without "
        f"stability")
    assert not (folder / "evaluations").exists()
