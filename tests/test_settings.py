"""Settings checked once, before any stage (crygen/settings.py through the Makefile), and
settings stamps that follow the content they stand for without `make -n` writing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crygen import settings
from tests.helpers import NACL_CIF, ROOT, cif, error_line, make, run_stage, subprocess_env


@pytest.mark.parametrize("assignment, problem", [
    ("SEED=-1", "SEED=-1: must be from 0 to 4294967295"),
    ("SEED=4294967296", "SEED=4294967296: must be from 0 to 4294967295"),
    ("EPOCHS=0", "EPOCHS=0: must be at least 1"),
    ("MAX_ATOMS=0", "MAX_ATOMS=0: must be from 1 to 500"),
    ("VAL_FRACTION=2", "VAL_FRACTION=2: must be at least 0 and at most 0.9"),
    ("GUIDANCE=nan", "GUIDANCE=nan: must be a finite number"),
    ("DEVICE=gpu", "DEVICE=gpu: must be auto, cpu, cuda or cuda:N"),
    ("RELAX=No", "RELAX=No: must be 1 or 0"),  # the Makefile reads only lower case
    ("LR=0", "LR=0: must be above 0"),
    ("DATA=my crystals/x.csv", "DATA=my crystals/x.csv: make cannot track a path with a space in it"),
])
def test_a_bad_setting_stops_make_in_one_line_before_anything_runs(tmp_path, assignment, problem):
    out = tmp_path / "run"
    proc = make("pipeline", f"OUT={out}", assignment, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and problem in lines[0], proc.stderr
    assert problem in error_line(proc)
    assert not out.exists() and "stages/" not in proc.stdout


def test_values_json_would_refuse_are_normalised_for_summarize(tmp_path):
    """`.2`, `1.` and `007` are numbers make and the stages accept; the settings summarize
    records are typed JSON written by crygen/settings.py, not text spliced into JSON."""
    written = tmp_path / "settings.json"
    proc = make("--eval", "settings-probe: ; @$(SETTINGS_PY) json --write $(PROBE) $(SETTINGS_ARGS)", "settings-probe",
                f"PROBE={written}", f"OUT={tmp_path / 'run'}", "VAL_FRACTION=.2", "GUIDANCE=1.", "SEED=007",
                "PROPERTIES=band gap,it's", 'CONDITION=band gap=1.5,note="x $$HOME"', "RELAX=no", "LR=1e-5")
    assert proc.returncode == 0, proc.stderr
    values = json.loads(written.read_text())
    assert (values["VAL_FRACTION"], values["GUIDANCE"], values["SEED"]) == (0.2, 1.0, 7)
    assert values["PROPERTIES"] == "band gap,it's" and values["CONDITION"] == 'band gap=1.5,note="x $HOME"'
    assert values["RELAX"] is False and values["LR"] == 1e-5 and values["EPOCHS"] == 1
    assert set(values) == {s.name for s in settings.SETTINGS}


def test_make_help_lists_every_declared_setting():
    out = make("help").stdout
    for s in settings.SETTINGS:
        assert f"  {s.name} " in out and s.meaning in out


def test_the_checker_needs_only_the_standard_library():
    """It runs before .venv exists: `python -S` (no site-packages) from a fresh clone."""
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import crygen.settings as s; print(len(s.SETTINGS))", str(ROOT)],
                          capture_output=True, text=True, env=subprocess_env({"PYTHONPATH": None}))
    assert proc.returncode == 0 and int(proc.stdout) == len(settings.SETTINGS), proc.stderr


# ---------------------------------------------------------------- stamps
def stamp_files(out) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((out / ".stamps").iterdir())}


@pytest.fixture
def prepared_folder(tmp_path):
    """A run folder whose prepare-data ran on a folder of four CIFs."""
    data = tmp_path / "cifs"
    data.mkdir()
    (data / "NaCl.cif").write_text(NACL_CIF)
    (data / "KCl.cif").write_text(cif(["K", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], a=4.4, name="KCl"))
    (data / "LiF.cif").write_text(cif(["Li", "F"], [(0, 0, 0), (0.5, 0.5, 0.5)], a=3.6, name="LiF"))
    (data / "NaF.cif").write_text(cif(["Na", "F"], [(0, 0, 0), (0.5, 0.5, 0.5)], a=4.0, name="NaF"))
    out = tmp_path / "run"
    make("prepare-data", f"DATA={data}", f"OUT={out}", "VAL_FRACTION=0.25")
    return data, out, (f"DATA={data}", f"OUT={out}", "VAL_FRACTION=0.25")


def test_a_cif_removed_from_the_data_folder_is_seen_and_make_n_writes_nothing(prepared_folder):
    data, out, args = prepared_folder
    assert "stages/prepare_data.py" not in make("-n", "pipeline", *args).stdout
    before = stamp_files(out)
    (data / "KCl.cif").unlink()  # the other files are untouched: only the folder's list changed
    plan = make("-n", "pipeline", *args).stdout
    assert "stages/prepare_data.py" in plan and "stages/finetune.py" in plan
    make("-n", "pipeline", *args, "EPOCHS=3", "SEED=5", "RELAX=0")  # changed settings, planned only
    assert stamp_files(out) == before  # byte for byte, not even touched
    make("prepare-data", *args)
    assert json.loads((out / "data" / "dataset.json").read_text())["n_train"] + \
        json.loads((out / "data" / "dataset.json").read_text())["n_val"] == 3
    assert "stages/prepare_data.py" not in make("-n", "pipeline", *args).stdout


def test_a_reference_rebuilt_under_the_same_name_is_seen(tmp_path):
    reference = tmp_path / "reference.gz"
    reference.write_bytes(b"first build")
    args = (f"OUT={tmp_path / 'run'}", f"REFERENCE={reference}")
    stamp = tmp_path / "run" / ".stamps" / "evaluate"
    make(str(stamp), *args)
    assert f"REFERENCE={json.dumps(str(reference))}" in stamp.read_text()
    assert make("-q", str(stamp), *args, check=False).returncode == 0
    mtime = reference.stat().st_mtime_ns
    reference.write_bytes(b"second build, another size")
    os.utime(reference, ns=(mtime, mtime))  # even with its old time
    assert make("-q", str(stamp), *args, check=False).returncode == 1
    assert "stamp --write" in make("-n", str(stamp), *args).stdout


def test_stamps_hold_only_the_settings_their_stage_reads():
    values = settings.normalise({**{s.name: "" for s in settings.SETTINGS}, "DATA": "d", "BASE_MODEL": "b",
                                 "OUT": "o", "EPOCHS": "1", "NUM_GEN": "2", "SEED": "3", "DEVICE": "cpu",
                                 "VAL_FRACTION": "0.1", "MAX_ATOMS": "20", "BATCH_SIZE": "8", "GEN_BATCH": "0",
                                 "DRAWS": "4", "RESULTS": "r", "RELAX": "1", "POTENTIAL": "chgnet",
                                 "REFERENCE": "default", "ALLOW_POTENTIAL_MISMATCH": "0", "BASE_STEPS": "10", "PART": "1/1",
                                 "FINETUNE_MODE": "full", "GUIDANCE": "2.0"})
    raw = {k: str(v) for k, v in values.items()}
    finetune = settings.stamp_text("finetune", values, raw, "")
    assert "EPOCHS=1" in finetune and "LR" not in finetune and "FINETUNE_MODE" not in finetune
    with_lr = settings.stamp_text("finetune", {**values, "LR": 1e-5}, raw, "")
    assert "LR=1e-05" in with_lr and with_lr != finetune
    assert "NUM_GEN" not in finetune and "EPOCHS" not in settings.stamp_text("generate", values, raw, "")
