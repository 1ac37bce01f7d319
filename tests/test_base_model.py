"""The embedded base model's samples look like crystals (its acceptance criterion)."""

from __future__ import annotations

import json

import pytest

from crygen import mattergen as mc
from crygen.generation import generate
from tests.helpers import BASE_MODEL

pytestmark = pytest.mark.slow


def test_base_model_is_a_mattergen_model_dir_with_its_recipe():
    mc.check_model_dir(BASE_MODEL)
    info = json.loads((BASE_MODEL / mc.CRYGEN_MODEL_INFO).read_text())
    recipe = info["recipe"]
    assert recipe["dataset"]["input_sha256"] == "067b94bde28b2c88b57c3e38cab72bee7e551820b7eb3489eaf49d1595f538d2"
    assert recipe["max_steps"] >= 1000 and recipe["parameters"] > 0
    assert abs(sum(info["num_atoms_distribution"].values()) - 1) < 1e-9


def test_base_model_samples_are_valid_crystals():
    from mattergen.evaluation.metrics.structure import is_smact_valid, structure_validity

    from crygen.evaluation import fast_smact_validity

    result = generate(BASE_MODEL, 32, seed=2024, batch_size=32, record_trajectories=False)
    assert len(result.structures) == 32
    structural = sum(structure_validity(s) for s in result.structures) / 32
    with fast_smact_validity():  # MatterGen's own can take hours on a many-element sample
        composition = sum(bool(is_smact_valid(s)) for s in result.structures) / 32
    print(f"base model: structurally valid {structural:.2f}, SMACT-valid {composition:.2f}")
    assert structural >= 0.9
    assert composition >= 0.5
