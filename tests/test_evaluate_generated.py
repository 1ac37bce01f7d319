"""stages/evaluate_generated.py: MatterGen's metrics on any folder of structures."""

from __future__ import annotations

import csv
import json

import ase.io
from pymatgen.io.ase import AseAtomsAdaptor

from tests.helpers import cif, demo_subset, error_line, run_stage


def cif_folder(tmp_path, n=6):
    xyz = demo_subset(tmp_path / "d.extxyz", n)
    folder = tmp_path / "cifs"
    folder.mkdir()
    structures = [AseAtomsAdaptor.get_structure(a) for a in ase.io.read(xyz, ":")]
    structures.append(structures[0].copy())  # a duplicate: uniqueness must see it
    for i, s in enumerate(structures):
        s.to(filename=str(folder / f"s{i}.cif"))
    (folder / "overlap.cif").write_text(cif(["Na", "Cl"], [(0, 0, 0), (0.02, 0, 0)], name="ov"))
    return folder, len(structures) + 1


def test_metrics_equal_mattergens_evaluator(tmp_path, small_dataset):
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator

    from crygen.evaluation import training_reference
    from crygen.structures import read_structures

    folder, n = cif_folder(tmp_path)
    out = tmp_path / "eval"
    run_stage("evaluate_generated", "--results", folder, "--reference-data", small_dataset, "--out", out)
    ours = json.loads((out / "metrics.json").read_text())
    evaluator = MetricsEvaluator.from_structures(read_structures(folder), reference=training_reference(small_dataset))
    theirs = evaluator.compute_metrics(metrics=evaluator.available_metrics)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] == theirs[k] or (ours[k] is None and theirs[k] != theirs[k]), k
    assert ours["avg_structure_validity"] == (n - 1) / n  # the overlapping pair
    assert ours["frac_unique_structures"] < 1.0  # the duplicate
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["count"] == n and summary["relaxed"] is False and summary["metrics"] == ours
    with open(out / "per_structure.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and {"formula", "chemical_system", "structure_validity"} <= set(rows[0])


def test_up_to_date_results_are_reused_and_changes_recomputed(tmp_path):
    folder, n = cif_folder(tmp_path, n=3)
    out = tmp_path / "eval"
    run_stage("evaluate_generated", "--results", folder, "--out", out)
    proc = run_stage("evaluate_generated", "--results", folder, "--out", out)
    assert "is up to date" in proc.stdout
    (folder / "s0.cif").unlink()
    proc = run_stage("evaluate_generated", "--results", folder, "--out", out)
    assert "is up to date" not in proc.stdout
    assert json.loads((out / "metrics_summary.json").read_text())["count"] == n - 1


def test_failure_is_an_error_alone_and_recorded_in_the_pipeline(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_stage("evaluate_generated", "--results", empty, check=False)
    assert proc.returncode == 2
    assert error_line(proc) == f"evaluate_generated: error: {empty}: folder holds no .cif files (nor train.csv + val.csv)"
    failed = tmp_path / "EVALUATION_FAILED.txt"
    proc = run_stage("evaluate_generated", "--results", empty, "--failure-file", failed)
    assert "folder holds no .cif files" in failed.read_text()
