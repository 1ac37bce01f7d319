"""stages/validate.py: the comparison is paired (same structures, timesteps, noise)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers import error_line, run_stage


def test_a_model_against_itself_has_exactly_zero_delta(tmp_path, tiny_model, small_dataset):
    out = tmp_path / "metrics.json"
    run_stage("validate", "--base-model", tiny_model, "--finetuned-model", tiny_model,
              "--data", small_dataset, "--out", out, "--draws", 3, "--batch-size", 2)
    m = json.loads(out.read_text())
    assert set(m) >= {"baseline", "finetuned", "delta", "delta_ci95"}
    assert m["baseline"]["loss"] > 0
    assert m["baseline"] == m["finetuned"]
    assert all(v == 0.0 for v in m["delta"].values())
    assert m["delta_ci95"]["loss"] == [0.0, 0.0]
    assert m["n_val"] == 4 and m["draws"] == 3


def test_perturbed_model_gives_a_delta_with_an_interval(tmp_path, tiny_model, small_dataset):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    ckpt = torch.load(other / "checkpoints" / "last.ckpt", weights_only=False)
    gen = torch.Generator().manual_seed(0)
    ckpt["state_dict"] = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.ndim == 2 else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, other / "checkpoints" / "last.ckpt")
    out = tmp_path / "metrics.json"
    run_stage("validate", "--base-model", tiny_model, "--finetuned-model", other,
              "--data", small_dataset, "--out", out, "--draws", 3, "--batch-size", 2)
    m = json.loads(out.read_text())
    d, (lo, hi) = m["delta"]["loss"], m["delta_ci95"]["loss"]
    assert d == pytest.approx(m["finetuned"]["loss"] - m["baseline"]["loss"], rel=1e-6)
    assert lo < d < hi


def test_same_seed_same_numbers(tmp_path, tiny_model, small_dataset):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        run_stage("validate", "--base-model", tiny_model, "--finetuned-model", tiny_model,
                  "--data", small_dataset, "--out", out, "--draws", 1, "--seed", 9)
        outs.append(json.loads(out.read_text())["baseline"])
    assert outs[0] == outs[1]


def test_missing_base_model(tmp_path, tiny_model, small_dataset):
    proc = run_stage("validate", "--base-model", tmp_path / "none", "--finetuned-model", tiny_model,
                     "--data", small_dataset, "--out", tmp_path / "m.json", check=False)
    assert proc.returncode == 2
    assert error_line(proc) == f"validate: error: {tmp_path / 'none'}: model directory not found"
    assert not (tmp_path / "m.json").exists()
