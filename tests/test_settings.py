"""Settings checked once, before any stage (crygen/settings.py through the Makefile), and
settings stamps that follow the content they stand for without `make -n` writing them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from crygen import settings
from tests.helpers import NACL_CIF, ROOT, cif, error_line, make, subprocess_env


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


# ---------------------------------------------------------------- one table of defaults
# The Makefile's ?= variables that are no setting of the table: the tools' own (the python, the
# environment, pytest's arguments), make remote's (shown in `make help`'s "also" line) and
# make eval-gen's REFERENCE_DATA (its own line there). The settings' defaults are the table's.
NOT_SETTINGS = {"PYTHON": "", "VENV": "", "ENV_READY": "", "PYTEST_ARGS": "", "LOCAL_VENV": "",
                "MACHINE": "make remote", "TARGET": "make remote", "WAIT": "make remote", "DRY_RUN": "make remote",
                "IMAGE": "make remote", "JOB": "make remote", "REFERENCE_DATA": "make eval-gen"}


def makefile_assignments() -> dict[str, list[tuple[str, str]]]:
    """Each variable the Makefile assigns at the start of a line: [(operator, value), ...]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"([A-Z][A-Z0-9_]*)\s*([?:+]?=)\s*(.*)$", line)
        if match:
            found.setdefault(match[1], []).append((match[2], match[3]))
    return found


def test_the_makefile_takes_each_default_from_the_table_and_derives_only_the_declared_ones():
    assigned = makefile_assignments()
    for s in settings.SETTINGS:
        if s.default is settings.DERIVED:
            assert [op for op, _ in assigned.get(s.name, [])] == ["?="], s.name
        else:
            assert s.name not in assigned, f"{s.name}: the Makefile sets it; its default is the table's"
    user_variables = {name for name, ops in assigned.items() if any(op == "?=" for op, _ in ops)}
    assert user_variables - set(NOT_SETTINGS) <= set(settings.BY_NAME)
    out = make("help").stdout
    for name, where in NOT_SETTINGS.items():
        if where:
            assert f"{where}: " in out and re.search(rf"\b{name}\b", out), name


def make_without_settings_in_env(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """make as the tests' ``make``, with no setting exported by whoever runs the tests (``env``: those to set)."""
    proc = subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", *args], capture_output=True, text=True,
                          env=subprocess_env({**{name: None for name in settings.BY_NAME}, **(env or {})}))
    assert proc.returncode == 0, proc.stderr
    return proc


def test_make_holds_the_tables_defaults_and_the_command_line_and_environment_still_win(tmp_path):
    show = "show-settings: ; @$(foreach v,$(SETTING_NAMES),$(info $v=$($v)))true"
    proc = make_without_settings_in_env("--eval", show, "show-settings", f"OUT={tmp_path}", "SEED=7", "LR=",
                                        env={"EPOCHS": "3"})
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert list(values) == list(settings.BY_NAME)
    given = {"OUT": str(tmp_path), "SEED": "7", "LR": "", "EPOCHS": "3",
             "DATA": "data/alexandria/alexandria-random-1k.xyz", "RESULTS": f"{tmp_path}/generation/results"}
    assert values == {s.name: given.get(s.name, s.default) for s in settings.SETTINGS}


def test_make_help_shows_each_settings_value_and_its_default_where_another_is_given():
    lines = {line.split()[0]: line for line in make_without_settings_in_env("help", "SEED=7").stdout.splitlines()
             if line.startswith("  ") and line.split()[0] in settings.BY_NAME}
    assert lines["SEED"].endswith("[7; default 42]")
    for s in settings.SETTINGS:
        if s.default is not None and s.name != "SEED":
            assert lines[s.name].endswith(f"[{s.default}]"), lines[s.name]


def test_every_default_is_a_value_its_setting_takes_and_one_plain_word_for_make():
    for s in settings.SETTINGS:
        if s.default is not None:
            s.parse(s.default)  # raises Bad
            assert not settings.NOT_MAKE_WORD.search(s.default), s.name
    assert [w.partition("?=")[0] for w in settings.makefile_defaults()] == list(settings.BY_NAME)


# The stages' options that stand for a setting: (stage, click parameter) -> setting.
STAGE_OPTIONS = {
    ("prepare_data", "val_fraction"): "VAL_FRACTION", ("prepare_data", "seed"): "SEED",
    ("prepare_data", "max_atoms"): "MAX_ATOMS", ("prepare_data", "property_names"): "PROPERTIES",
    ("finetune", "epochs"): "EPOCHS", ("finetune", "batch_size"): "BATCH_SIZE", ("finetune", "lr"): "LR",
    ("finetune", "seed"): "SEED", ("finetune", "device"): "DEVICE", ("finetune", "property_names"): "PROPERTIES",
    ("finetune", "mode"): "FINETUNE_MODE",
    ("validate", "draws"): "DRAWS", ("validate", "seed"): "SEED", ("validate", "device"): "DEVICE",
    ("generate", "batch_size"): "GEN_BATCH", ("generate", "seed"): "SEED", ("generate", "device"): "DEVICE",
    ("generate", "condition"): "CONDITION", ("generate", "guidance"): "GUIDANCE",
    ("generate", "shards"): "SHARDS", ("generate", "threads"): "THREADS",
    ("evaluate_generated", "shards"): "SHARDS", ("evaluate_generated", "threads"): "THREADS",
    ("evaluate_generated", "reference"): "REFERENCE", ("evaluate_generated", "relax"): "RELAX",
    ("evaluate_generated", "potential"): "POTENTIAL", ("evaluate_generated", "device"): "DEVICE",
    ("build_reference", "part"): "PART", ("build_reference", "potential"): "POTENTIAL",
    ("build_reference", "device"): "DEVICE",
    ("train_base", "max_steps"): "BASE_STEPS", ("train_base", "seed"): "SEED", ("train_base", "device"): "DEVICE",
}


def test_the_stages_options_take_their_defaults_from_the_table():
    stages = {}
    for stage in sorted({stage for stage, _ in STAGE_OPTIONS}):
        spec = importlib.util.spec_from_file_location(f"stage_{stage}", ROOT / "stages" / f"{stage}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        stages[stage] = {p.name: p for p in module.main.params}
    for (stage, param), name in STAGE_OPTIONS.items():
        option, setting = stages[stage][param], settings.BY_NAME[name]
        assert option.nargs == 1 and option.default in (setting.value, setting.default), (stage, param)
        if option.default == setting.default and option.default != setting.value:  # the stage parses it
            setting.parse(option.type.convert(option.default, option, None))
    # and no stage writes a setting's default by hand: every such option goes through the table
    for stage in stages:
        source = (ROOT / "stages" / f"{stage}.py").read_text()
        assert not re.search(r'click\.option\("--(seed|device|potential)"', source), stage


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
                                 "DRAWS": "4", "SHARDS": "1", "THREADS": "0", "RESULTS": "r", "RELAX": "1", "RELAX_STEPS": "500", "COMPARE_OUT": "c",
                                 "POTENTIAL": "chgnet",
                                 "REFERENCE": "default", "ALLOW_POTENTIAL_MISMATCH": "0", "BASE_STEPS": "10", "PART": "1/1",
                                 "FINETUNE_MODE": "full", "GUIDANCE": "2.0"})
    raw = {k: str(v) for k, v in values.items()}
    finetune = settings.stamp_text("finetune", values, raw, "")
    assert "EPOCHS=1" in finetune and "LR" not in finetune and "FINETUNE_MODE" not in finetune
    with_lr = settings.stamp_text("finetune", {**values, "LR": 1e-5}, raw, "")
    assert "LR=1e-05" in with_lr and with_lr != finetune
    assert "NUM_GEN" not in finetune and "EPOCHS" not in settings.stamp_text("generate", values, raw, "")


def test_a_link_that_leads_nowhere_in_a_folder_setting_is_fingerprinted_not_a_traceback(tmp_path):
    model = tmp_path / "model"
    (model / "checkpoints").mkdir(parents=True)
    (model / "config.yaml").write_text("x: 1\n")
    (model / "checkpoints" / "last.ckpt").symlink_to(tmp_path / "elsewhere.ckpt")
    dangling = settings.fingerprint(str(model), "")
    assert dangling.startswith("2 file(s), ")
    (model / "checkpoints" / "last.ckpt").unlink()
    (model / "checkpoints" / "last.ckpt").symlink_to(tmp_path / "moved.ckpt")
    os.utime(model / "checkpoints" / "last.ckpt", ns=(1, 1), follow_symlinks=False)
    assert settings.fingerprint(str(model), "") not in (None, dangling)  # re-pointed: seen
    (tmp_path / "moved.ckpt").write_text("weights")
    assert settings.fingerprint(str(model), "").startswith("2 file(s), ")  # now the file it leads to
    stamp = tmp_path / "run" / ".stamps" / "finetune"
    proc = make(str(stamp), f"OUT={tmp_path / 'run'}", f"BASE_MODEL={model}", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
