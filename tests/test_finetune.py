"""stages/finetune.py: output is a MatterGen model dir; interrupted runs resume."""

from __future__ import annotations

import json

import torch

from crygen import mattergen_compat as mc
from tests.helpers import error_line, run_stage


def test_finetune_writes_a_model_dir_that_differs_from_the_base(tmp_path, tiny_model, small_dataset):
    out = tmp_path / "ft"
    run_stage("finetune", "--base-model", tiny_model, "--data", small_dataset, "--out", out,
              "--epochs", 1, "--batch-size", 8)
    done = json.loads((out / "DONE.json").read_text())
    assert done["global_step"] == 5  # 36 training structures / batch of 8
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
    (out / "DONE.json").unlink()  # as if killed after the first epoch's checkpoint
    proc = run_stage("finetune", *args, "--epochs", 1)
    assert "resuming from" in proc.stderr
    assert json.loads((out / "DONE.json").read_text())["global_step"] == 5  # nothing redone
    # other settings start over rather than mixing two runs in one checkpoint
    proc = run_stage("finetune", *args, "--epochs", 2, "--seed", 1)
    assert "resuming from" not in proc.stderr
    assert json.loads((out / "DONE.json").read_text())["global_step"] == 10


def test_bad_data_folder(tmp_path, tiny_model):
    proc = run_stage("finetune", "--base-model", tiny_model, "--data", tmp_path, "--out", tmp_path / "ft", check=False)
    assert proc.returncode == 2
    assert "not a prepared dataset (no train/pos.npy)" in error_line(proc)
    assert not (tmp_path / "ft").exists()
