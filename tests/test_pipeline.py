"""`make pipeline` end to end on the embedded default, then make's bookkeeping."""

from __future__ import annotations

import json
import time
import zipfile

import ase.io
import pytest

from tests.helpers import error_line, make, run_stage

pytestmark = pytest.mark.slow
STAGES = ("prepare_data", "finetune", "validate", "generate", "evaluate_generated", "summarize")


def said(output: str) -> list[str]:
    """The lines of an output that are not make's own (`make -C` enters and leaves ROOT)."""
    return [line for line in output.splitlines() if line.strip() and not line.startswith("make")]


def stamps_and_outputs(run_dir) -> dict[str, tuple[bytes, int]]:
    files = [*(run_dir / ".stamps").iterdir(), run_dir / "summary.json", run_dir / "data" / "dataset.json",
             run_dir / "evaluation" / "metrics.json", run_dir / "generation" / "results" / "metrics_summary.json"]
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def test_the_terminal_gets_a_few_lines_and_the_logs_get_the_libraries(pipeline_run):
    run_dir, proc = pipeline_run
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) <= 40, "\n".join(lines)
    noise = ("GPU available", "TPU available", "Warning", "MODELS_PROJECT_ROOT", "pkg_resources")
    assert not [line for line in lines if any(n in line for n in noise)], "\n".join(lines)
    assert said(proc.stdout)[-1] == f"pipeline: {run_dir}/summary.json"
    logs = {stage: (run_dir / "logs" / f"{stage}.log").read_text() for stage in STAGES}
    assert "GPU available" in logs["finetune"] and "MODELS_PROJECT_ROOT" in logs["finetune"]
    assert f"summarize: {run_dir}/summary.json" in logs["summarize"]  # said lines are logged too


def test_summary_has_every_key_filled(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s) >= {"checkpoint", "metrics", "generation_dir", "generation_eval", "provenance"}
    for part in ("baseline", "finetuned", "delta"):
        assert isinstance(s["metrics"][part]["loss"], float)
    # an interval over the validation structures (not over (draw, batch) units), and it has width
    interval = s["provenance"]["validation"]["interval"]
    assert interval["unit"] == "structure" and interval["n"] == s["provenance"]["validation"]["n_val"]
    lo, hi = s["metrics"]["delta_ci95"]["loss"]
    assert hi > lo
    ev = s["generation_eval"]
    assert ev["count"] == 2 and ev["relaxed"] is True, ev
    assert 0.0 <= ev["metrics"]["avg_structure_validity"] <= 1.0
    # relaxed with CHGNet against the default reference: stability numbers, unless uncovered; beside
    # the metrics, with the reason, where most verdicts rest on a hull of elements only
    stability = ev.get("withheld_metrics") or ev
    assert stability is ev or stability["reason"]
    if not ev["uncovered_chemical_systems"]:
        assert 0.0 <= stability["metrics"]["frac_stable_structures"] <= 1.0
        assert isinstance(stability["metrics"]["avg_energy_above_hull_per_atom"], float)
        assert "frac_novel_unique_stable_structures_strict" in stability["additional_metrics"]
    prov = s["provenance"]
    assert prov["versions"]["mattergen"] == "1.0.3" and prov["versions"]["torch"].startswith("2.13.0")
    assert prov["settings"]["EPOCHS"] == 1 and prov["settings"]["NUM_GEN"] == 2
    assert {"prepare_data", "finetune", "validate", "generate", "evaluate_generated"} <= set(prov["stages"])
    assert prov["device"] == "cpu"


def test_generated_files(run_dir):
    results = run_dir / "generation" / "results"
    assert len(ase.io.read(results / "generated_crystals.extxyz", ":")) == 2
    with zipfile.ZipFile(results / "generated_crystals_cif.zip") as zf:
        assert len([n for n in zf.namelist() if n.endswith(".cif")]) == 2
    assert (run_dir / "generation" / "model_for_generation" / "checkpoints" / "last.ckpt").is_file()


def test_eval_gen_on_a_plain_folder_of_cifs(run_dir, tmp_path):
    folder = tmp_path / "cifs"
    with zipfile.ZipFile(run_dir / "generation" / "results" / "generated_crystals_cif.zip") as zf:
        zf.extractall(folder)
    out = tmp_path / "eval"
    make("eval-gen", f"RESULTS={folder}", f"EVAL_OUT={out}", f"OUT={run_dir}")
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["count"] == 2 and summary["relaxed"] is True
    assert "training set" in summary["definitions"]["novelty_against"]  # OUT/data counted
    assert (out / "per_structure.csv").is_file() and (out / "relaxed_structures.extxyz").is_file()
    failed = make("eval-gen", f"RESULTS={tmp_path / 'absent'}", f"EVAL_OUT={out}", check=False)
    assert failed.returncode != 0 and "absent: not found" in failed.stderr


def test_second_run_does_nothing(run_dir):
    before = stamps_and_outputs(run_dir)
    start = time.time()
    proc = make("pipeline", "EPOCHS=1", "NUM_GEN=2", f"OUT={run_dir}")
    assert time.time() - start < 10
    assert said(proc.stdout) == [f"pipeline: {run_dir}/summary.json"] and not proc.stderr.strip()  # no stage ran
    assert stamps_and_outputs(run_dir) == before
    # `pipeline` is phony (make -q always calls it stale); its real output must be up to date
    assert make("-q", str(run_dir / "summary.json"), "EPOCHS=1", "NUM_GEN=2", f"OUT={run_dir}",
                check=False).returncode == 0


def test_changing_a_variable_redoes_only_the_stages_that_depend_on_it(run_dir):
    # each plan is against the run's own stamps: `make -n` writes none of them
    before = stamps_and_outputs(run_dir)
    plan = make("-n", "pipeline", "EPOCHS=1", "NUM_GEN=2", "RELAX=0", f"OUT={run_dir}").stdout
    assert "stages/evaluate_generated.py" in plan and "--no-relax" in plan
    assert "stages/generate.py" not in plan
    plan = make("-n", "pipeline", "EPOCHS=1", "NUM_GEN=3", "RELAX=0", f"OUT={run_dir}").stdout
    assert "stages/generate.py" in plan and "stages/summarize.py" in plan
    assert "stages/finetune.py" not in plan and "stages/prepare_data.py" not in plan
    plan = make("-n", "pipeline", "EPOCHS=2", "NUM_GEN=2", f"OUT={run_dir}").stdout
    assert "stages/finetune.py" in plan and "stages/prepare_data.py" not in plan
    assert stamps_and_outputs(run_dir) == before
    assert "stages/" not in make("-n", "pipeline", "EPOCHS=1", "NUM_GEN=2", f"OUT={run_dir}").stdout


def test_missing_base_model_is_a_one_line_error(tmp_path):
    from tests.helpers import NACL_CIF

    data = tmp_path / "in.csv"
    rows = "\n".join(f'm{i},"{NACL_CIF}"' for i in range(3))
    data.write_text(f"material_id,cif\n{rows}\n")
    out = tmp_path / "run"
    proc = make("finetune", f"DATA={data}", f"BASE_MODEL={tmp_path / 'nope'}", f"OUT={out}", check=False)
    assert proc.returncode != 0
    assert f"finetune: error: {tmp_path / 'nope'}: model directory not found" in proc.stderr
    assert not (out / "finetune" / "DONE.json").exists()


@pytest.mark.parametrize("num_gen", ["0"])
def test_num_gen_zero_through_make(tmp_path, num_gen, run_dir):
    proc = make("generate", f"NUM_GEN={num_gen}", "EPOCHS=1", f"OUT={run_dir}", check=False)
    assert proc.returncode != 0
    assert "NUM_GEN=0: must be at least 1" in error_line(proc)  # the settings check, before any stage
    # the earlier, complete generation is untouched
    assert len(ase.io.read(run_dir / "generation" / "results" / "generated_crystals.extxyz", ":")) == 2


# ---------------------------------------------------------------- the console of one stage
def test_with_a_log_an_unexpected_error_is_one_line_pointing_at_its_traceback(tmp_path):
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "metrics.json").write_text("{}")  # no metrics: a bug's KeyError, not a CrygenError
    (tmp_path / "settings.json").write_text("{}")
    args = ("--run-dir", tmp_path, "--settings", tmp_path / "settings.json")
    logs = tmp_path / "logs"
    proc = run_stage("summarize", *args, check=False, env={"CRYGEN_LOG_DIR": str(logs)})
    log = logs / "summarize.log"
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"summarize: running (its libraries' output: {log})",
                                        f"summarize: error: unexpected KeyError: 'baseline' (traceback in {log})"]
    logged = log.read_text()
    assert "Traceback (most recent call last)" in logged and all(line in logged for line in proc.stderr.splitlines())
    bare = run_stage("summarize", *args, check=False, env={"CRYGEN_LOG_DIR": None})  # as before: the traceback
    assert bare.returncode == 1 and "Traceback (most recent call last)" in bare.stderr


def test_with_a_log_a_stage_error_still_reaches_the_terminal(tmp_path):
    logs = tmp_path / "logs"
    proc = run_stage("prepare_data", "--input", tmp_path / "absent.csv", "--out", tmp_path / "data", check=False,
                     env={"CRYGEN_LOG_DIR": str(logs)})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 2  # "running", then the error
    assert error_line(proc).startswith(f"prepare_data: error: {tmp_path / 'absent.csv'}")
    assert error_line(proc) in (logs / "prepare_data.log").read_text()
