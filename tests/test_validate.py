"""stages/validate.py: the comparison is paired (same structures, timesteps, noise), per
structure, with an interval over structures (crygen/validation.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from crygen.validation import NO_INTERVAL_ONE_STRUCTURE, compare, paired_interval
from tests.helpers import demo_subset, error_line, run_stage


def strict_json(path):
    """The file parsed by a reader that refuses NaN and Infinity, as other tools do."""
    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


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
    assert m["interval"]["unit"] == "structure" and m["interval"]["n"] == 4 and m["interval"]["df"] == 3
    assert m["interval"]["noise_draw_se"]["loss"] == 0.0


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
    m = strict_json(out)
    d, (lo, hi) = m["delta"]["loss"], m["delta_ci95"]["loss"]
    assert d == pytest.approx(m["finetuned"]["loss"] - m["baseline"]["loss"], rel=1e-6)
    # an interval of some width around the delta, over the 4 structures, and the noise-draw
    # error beside it (3 draws)
    assert hi - lo > 0 and (lo + hi) / 2 == pytest.approx(d, abs=1e-9)
    assert m["interval"]["n"] == 4 and m["interval"]["draws_per_structure"] == 3
    assert m["interval"]["noise_draw_se"]["loss"] > 0


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


def test_per_structure_losses_average_to_mattergens_batch_loss(tiny_model, small_dataset):
    from hydra.utils import instantiate

    from crygen import mattergen as mc
    from crygen.validation import structure_losses

    module = mc.load_lightning_module(tiny_model)
    datamodule = instantiate(mc.data_module_config(small_dataset, batch_size=3))
    batches = list(datamodule.val_dataloader())
    assert [b.get_batch_size() for b in batches] == [3, 1]
    seen = []
    with torch.no_grad():
        for batch in batches:
            torch.manual_seed(5)
            loss, metrics = module.diffusion_module.calc_loss(batch)
            torch.manual_seed(5)
            per_structure = structure_losses(module.diffusion_module, batch)
            assert per_structure["loss"].shape == (batch.get_batch_size(),)
            assert float(per_structure["loss"].mean()) == pytest.approx(float(loss), rel=1e-6)
            for field in ("pos", "cell", "atomic_numbers"):
                assert float(per_structure[field].mean()) == pytest.approx(float(metrics[field]), rel=1e-6)
            seen.append(per_structure["loss"])
    assert seen[0].std() > 0  # each structure its own loss, not the batch mean repeated


def test_one_validation_structure_has_no_interval_and_says_why(tmp_path, tiny_model):
    data = tmp_path / "data"
    run_stage("prepare_data", "--input", demo_subset(tmp_path / "five.extxyz", 5), "--out", data)
    out = tmp_path / "metrics.json"
    run_stage("validate", "--base-model", tiny_model, "--finetuned-model", tiny_model,
              "--data", data, "--out", out, "--draws", 1)
    m = strict_json(out)  # before: [NaN, NaN], which is not JSON
    assert m["n_val"] == 1
    assert m["delta_ci95"]["loss"] is None and m["interval"]["df"] is None
    assert m["interval"]["noise_draw_se"]["loss"] is None
    assert NO_INTERVAL_ONE_STRUCTURE in m["interval"]["note"]


def test_paired_interval_known_answer():
    """Structure differences 1, 2, 3, 6 (each the mean of two draws that differ by +-0.5):
    mean 3, sample sd sqrt(14/3), t(3) quantile 3.182446; draw-to-draw variance of a
    difference 0.5, so the noise-draw error is sqrt(0.5 / (2 draws * 4 structures)) = 0.25."""
    base = np.zeros((2, 4))
    tuned = np.array([[1.5, 2.5, 3.5, 6.5], [0.5, 1.5, 2.5, 5.5]])
    r = paired_interval(base, tuned)
    half = 3.182446305284263 * np.sqrt(14 / 3) / 2
    assert r["delta"] == pytest.approx(3.0)
    assert r["ci95"] == pytest.approx([3 - half, 3 + half])
    assert r["noise_draw_se"] == pytest.approx(0.25)
    # every structure counts once, whatever batch it was in
    block = compare({"loss": base}, {"loss": tuned})
    assert block["delta"]["loss"] == pytest.approx(3.0) and block["interval"]["df"] == 3


def test_interval_covers_the_true_delta_95_percent_of_the_time():
    """Simulated validation sets: each structure has its own loss level and its own true
    effect of fine-tuning (mean 0.1 over structures), and each noise draw adds noise shared
    by both models (the pairing) plus noise of its own. Over 1000 sets the interval must
    hold the true delta about 95 % of the time (binomial sd 0.7 %)."""
    rng = np.random.default_rng(0)
    true_delta, n, draws, trials = 0.1, 12, 3, 1000
    covered = 0
    for _ in range(trials):
        level = rng.normal(2.0, 0.5, n)
        effect = true_delta + rng.normal(0, 0.2, n)
        shared = rng.normal(0, 1.0, (draws, n))
        base = level + shared + rng.normal(0, 0.1, (draws, n))
        tuned = level + effect + shared + rng.normal(0, 0.1, (draws, n))
        lo, hi = paired_interval(base, tuned)["ci95"]
        covered += lo <= true_delta <= hi
    assert 0.92 <= covered / trials <= 0.98
