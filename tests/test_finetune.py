"""stages/finetune.py: output is a MatterGen model dir; interrupted runs resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from crygen import mattergen as mc
from crygen.training import staging_dir
from tests.helpers import STAGES, error_line, run_stage, subprocess_env


def test_finetune_writes_a_model_dir_that_differs_from_the_base(tmp_path, tiny_model, small_dataset):
    out = tmp_path / "ft"
    proc = run_stage("finetune", "--base-model", tiny_model, "--data", small_dataset, "--out", out,
                     "--epochs", 1, "--batch-size", 8)
    done = json.loads((out / "DONE.json").read_text())
    assert done["global_step"] == 5  # 36 training structures / batch of 8
    # MatterGen's fine-tuning rate unless told otherwise, recorded where the model is read
    assert done["lr"] == 5e-6 and mc.read_model_info(out)["settings"]["lr"] == 5e-6
    assert mc.load_model_config(out)["lightning_module"]["optimizer_partial"]["lr"] == 5e-6
    assert "learning rate 5e-06" in proc.stderr
    mc.check_model_dir(out)
    base = mc.read_checkpoint(tiny_model / "checkpoints" / "last.ckpt")["state_dict"]
    tuned = mc.read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert "config" in tuned  # MatterGen's load_from_checkpoint needs it
    changed = [k for k in base if not torch.equal(base[k], tuned["state_dict"][k])]
    assert changed
    assert mc.load_model_config(out)["data_module"]["train_dataset"]["cache_path"] == str(small_dataset.resolve() / "train")


def test_interrupted_finetune_resumes_from_last_checkpoint(tmp_path, tiny_model, small_dataset):
    out = tmp_path / "ft"
    args = ["--base-model", tiny_model, "--data", small_dataset, "--out", out, "--batch-size", 8]
    run_stage("finetune", *args, "--epochs", 1)
    # as if killed after the epoch's checkpoint, before the model dir was finished
    staging = staging_dir(out)
    out.rename(staging)
    for name in ("DONE.json", "config.yaml", mc.CRYGEN_MODEL_INFO):
        (staging / name).unlink()
    proc = run_stage("finetune", *args, "--epochs", 1)
    assert "resuming from" in proc.stderr
    assert json.loads((out / "DONE.json").read_text())["global_step"] == 5  # nothing redone
    assert not staging.exists()
    # other settings start over rather than mixing two runs in one checkpoint
    proc = run_stage("finetune", *args, "--epochs", 2, "--seed", 1)
    assert "resuming from" not in proc.stderr
    assert json.loads((out / "DONE.json").read_text())["global_step"] == 10


def test_new_settings_that_fail_midway_leave_the_previous_model(tmp_path, tiny_model, small_dataset):
    """Item 10: training with new settings is killed after it started; the model trained
    with the old settings is still there, whole, and the next run replaces it once done."""
    out = tmp_path / "ft"
    args = ["--base-model", tiny_model, "--data", small_dataset, "--out", out, "--batch-size", 8, "--epochs", 1]
    run_stage("finetune", *args)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = subprocess.Popen([sys.executable, str(STAGES / "finetune.py"), *map(str, args), "--seed", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        # the new run has begun once a run.json holds its settings (before the fix: in out itself)
        deadline = time.time() + 120
        while not any(f.is_file() and json.loads(f.read_text()).get("seed") == 1
                      for f in (out / "run.json", staging_dir(out) / "run.json")):
            assert proc.poll() is None and time.time() < deadline, "the new fine-tune never started"
            time.sleep(0.01)  # run.json is written atomically; training follows within a second
    finally:
        proc.kill()
        proc.wait()
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} if out.is_dir() else {}
    assert after == before
    run_stage("finetune", *args, "--seed", 1)
    assert json.loads((out / "run.json").read_text())["seed"] == 1
    assert (out / "DONE.json").is_file() and not staging_dir(out).exists()


def test_learning_rate_default_is_recorded_and_a_bad_one_is_one_line(tmp_path, tiny_model, small_dataset):
    for bad in ("0", "-1e-5", "nan", "fast"):
        proc = run_stage("finetune", "--base-model", tiny_model, "--data", small_dataset, "--out", tmp_path / "ft",
                         "--lr", bad, check=False)
        assert proc.returncode == 2
        assert error_line(proc) == f"finetune: error: LR={bad}: expected a positive number"
    assert not (tmp_path / "ft").exists()


def test_bad_data_folder(tmp_path, tiny_model):
    proc = run_stage("finetune", "--base-model", tiny_model, "--data", tmp_path, "--out", tmp_path / "ft", check=False)
    assert proc.returncode == 2
    assert "not a prepared dataset (no train/pos.npy)" in error_line(proc)
    assert not (tmp_path / "ft").exists()
