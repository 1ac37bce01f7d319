"""crygen's MatterGen compatibility layer against MatterGen's own loaders."""

from __future__ import annotations

import json

import pytest
import torch

from crygen import mattergen_compat as mc
from crygen.fileio import CrygenError


def test_gemnet_scale_file_is_installed_where_gemnet_reads_it():
    path = mc.ensure_mattergen_files()
    from mattergen.common.utils.globals import MODELS_PROJECT_ROOT

    assert path == MODELS_PROJECT_ROOT / "common" / "gemnet" / "gemnet-dT.json"
    values = json.loads(path.read_text())
    assert values["TripInteraction_1_had_rbf"] == pytest.approx(18.8736, rel=1e-4)


def test_model_dir_loads_in_mattergens_own_loader(tiny_model):
    """MatterGen's MatterGenCheckpointInfo + load_model_diffusion accept crygen's model dir."""
    from mattergen.common.utils.eval_utils import load_model_diffusion

    info = mc.checkpoint_info(tiny_model)
    assert info.checkpoint_path.endswith("checkpoints/last.ckpt")
    module = load_model_diffusion(info)
    ours = mc.load_lightning_module(tiny_model)
    for (k, a), (_, b) in zip(module.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a.cpu(), b), k
    # the GemNet scale factors live in the checkpoint, not only in the json file
    assert any("scale_factor" in k for k in module.state_dict())


def test_sampler_steps_follow_the_model(tiny_model):
    from tests.conftest import TINY_DIFFUSION_STEPS

    config = mc.load_model_config(tiny_model)
    assert mc.sampling_overrides(config) == [f"sampler_partial.N={TINY_DIFFUSION_STEPS}"]


def test_missing_model_dir(tmp_path):
    with pytest.raises(CrygenError, match="model directory not found"):
        mc.check_model_dir(tmp_path / "nope")


def test_file_that_is_not_a_checkpoint(tmp_path, tiny_model):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "checkpoints" / "last.ckpt").write_text("not a checkpoint")
    with pytest.raises(CrygenError) as e:
        mc.check_model_dir(bad)
    assert str(e.value) == f"{bad / 'checkpoints' / 'last.ckpt'}: not a PyTorch checkpoint (UnpicklingError)"


def test_config_without_lightning_module(tmp_path, tiny_model):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "config.yaml").write_text("trainer: {}\n")
    with pytest.raises(CrygenError, match="not a MatterGen config"):
        mc.check_model_dir(bad)
