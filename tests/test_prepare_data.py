"""stages/prepare_data.py on tiny inputs: checks, rejections, splits and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.helpers import NACL_CIF, cif, demo_subset, error_line, run_stage

GOOD = [
    ("nacl", NACL_CIF),
    ("mgo", cif(["Mg", "O"], [(0, 0, 0), (0.5, 0.5, 0.5)], a=4.2, name="MgO")),
    ("kbr", cif(["K", "Br"], [(0, 0, 0), (0.5, 0.5, 0.5)], a=6.6, name="KBr")),
]


def write_csv(path, rows, extra_cols=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["material_id", "cif", *(extra_cols or [])])
        w.writerows(rows)
    return path


def rejected(out):
    with open(out / "rejected.csv") as f:
        return {r["material_id"]: r["reason"] for r in csv.DictReader(f)}


def test_csv_rejects_bad_structures_with_reasons(tmp_path):
    rows = [*GOOD,
            ("broken", "data_x\n_cell_length_a 4\nthis is not a cif"),
            ("xenon", cif(["Xe", "F"], [(0, 0, 0), (0.5, 0.5, 0.5)], name="XeF")),
            ("overlap", cif(["Na", "Cl"], [(0, 0, 0), (0.05, 0, 0)], name="ov"))]
    src = write_csv(tmp_path / "in.csv", rows)
    run_stage("prepare_data", "--input", src, "--out", tmp_path / "ds", "--val-fraction", "0.34")
    reasons = rejected(tmp_path / "ds")
    assert set(reasons) == {"broken", "xenon", "overlap"}
    assert reasons["broken"].startswith("malformed CIF")
    assert "Xe" in reasons["xenon"] and "unsupported element" in reasons["xenon"]
    assert reasons["overlap"].startswith("overlapping atoms (0.20 A apart")
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert (info["n_train"], info["n_val"], info["n_rejected"]) == (2, 1, 3)
    # MatterGen's cache layout, primitive cells (NaCl P1 cubic cell stays 2 atoms)
    n = np.load(tmp_path / "ds" / "train" / "num_atoms.npy")
    assert n.sum() == np.load(tmp_path / "ds" / "train" / "atomic_numbers.npy").size


def test_split_is_deterministic_and_seeded(tmp_path, demo_data):
    xyz = demo_subset(tmp_path / "d.extxyz", 30)
    ids = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_stage("prepare_data", "--input", xyz, "--out", tmp_path / name, "--seed", seed, "--val-fraction", 0.2)
        ids[name] = sorted(np.load(tmp_path / name / "val" / "structure_id.npy").tolist())
    assert len(ids["a"]) == 6
    assert ids["a"] == ids["b"]
    assert ids["a"] != ids["c"]


def test_existing_splits_are_kept(tmp_path):
    src = write_csv(tmp_path / "in.csv", [(*GOOD[0], "val"), (*GOOD[1], "train"), (*GOOD[2], "train")], ["split"])
    run_stage("prepare_data", "--input", src, "--out", tmp_path / "ds")
    assert np.load(tmp_path / "ds" / "val" / "structure_id.npy").tolist() == ["nacl"]


def test_csv_columns_that_are_not_python_names(tmp_path):
    """Ordinary headers such as 'band gap', 'e-hull' or '_note' are columns like any other
    (issue 15, item 1): kept without PROPERTIES, and usable as a property."""
    rows = [(*g, gap, hull, "x") for g, gap, hull in zip(GOOD, ("1.5", "0.2", "4.0"), ("0.0", "0.1", "0.3"))]
    src = write_csv(tmp_path / "in.csv", rows, ["band gap", "e-hull", "_note"])
    run_stage("prepare_data", "--input", src, "--out", tmp_path / "plain", "--val-fraction", 0.34)
    assert json.loads((tmp_path / "plain" / "dataset.json").read_text())["n_train"] == 2
    run_stage("prepare_data", "--input", src, "--out", tmp_path / "props", "--val-fraction", 0.34,
              "--properties", "band gap,e-hull")
    definitions = json.loads((tmp_path / "props" / "properties.json").read_text())
    assert definitions["band gap"]["kind"] == "float" and definitions["band gap"]["max"] == 4.0
    assert definitions["e-hull"]["min"] == 0.0


def test_folder_of_cifs(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for mid, text in GOOD:
        (folder / f"{mid}.cif").write_text(text)
    run_stage("prepare_data", "--input", folder, "--out", tmp_path / "ds", "--val-fraction", "0.34")
    ids = np.load(tmp_path / "ds" / "train" / "structure_id.npy").tolist()
    ids += np.load(tmp_path / "ds" / "val" / "structure_id.npy").tolist()
    assert sorted(ids) == ["kbr", "mgo", "nacl"]


def test_max_atoms_limit(tmp_path, demo_data):
    xyz = demo_subset(tmp_path / "d.extxyz", 30)
    run_stage("prepare_data", "--input", xyz, "--out", tmp_path / "ds", "--max-atoms", "4", "--val-fraction", "0.2")
    reasons = rejected(tmp_path / "ds")
    assert reasons and all(r.endswith("atoms in the primitive cell (limit 4)") for r in reasons.values())
    for split in ("train", "val"):
        assert np.load(tmp_path / "ds" / split / "num_atoms.npy").max() <= 4


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty CSV"),
        ("material_id,cif\n", "CSV has a header but no rows"),
        ("id,structure\n1,x\n", "missing column(s) cif, material_id"),
    ],
)
def test_bad_csv_is_one_line_error(tmp_path, content, message):
    src = tmp_path / "in.csv"
    src.write_text(content)
    proc = run_stage("prepare_data", "--input", src, "--out", tmp_path / "ds", check=False)
    assert proc.returncode == 2
    assert error_line(proc) == f"prepare_data: error: {src}: {message}"
    assert not (tmp_path / "ds").exists()


def test_all_rejected_is_an_error_and_keeps_earlier_output(tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    run_stage("prepare_data", "--input", good, "--out", tmp_path / "ds", "--val-fraction", "0.34")
    before = (tmp_path / "ds" / "dataset.json").read_text()
    bad = write_csv(tmp_path / "bad.csv", [("xe", cif(["Xe"], [(0, 0, 0)], name="Xe"))])
    proc = run_stage("prepare_data", "--input", bad, "--out", tmp_path / "ds", check=False)
    assert proc.returncode == 2
    assert "all 1 structures rejected (first: xe: unsupported element(s) Xe" in error_line(proc)
    assert (tmp_path / "ds" / "dataset.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]  # no temp left behind


def test_missing_input(tmp_path):
    proc = run_stage("prepare_data", "--input", tmp_path / "nope.csv", "--out", tmp_path / "ds", check=False)
    assert proc.returncode == 2
    assert error_line(proc) == f"prepare_data: error: {tmp_path / 'nope.csv'}: input not found"
