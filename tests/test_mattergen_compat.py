"""crygen's MatterGen compatibility layer against MatterGen's own loaders."""

from __future__ import annotations

import contextlib
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


def _compositions():
    """Every demo crystal's composition plus random 2-4 element ones (metals and not)."""
    import random

    import ase.io

    from tests.helpers import DEMO_DATA

    comps = set()
    for atoms in ase.io.read(DEMO_DATA, ":"):
        counts = {}
        for z in atoms.numbers:
            counts[int(z)] = counts.get(int(z), 0) + 1
        comps.add(tuple(sorted(counts.items())))
    rng = random.Random(0)
    pool = [1, 3, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 20, 22, 26, 29, 30, 31, 33, 34, 35, 38, 50, 53, 56, 83]
    for _ in range(300):
        elements = rng.sample(pool, rng.randint(2, 4))
        comps.add(tuple(sorted((z, rng.randint(1, 4)) for z in elements)))
    return sorted(comps)


def test_fast_smact_validity_gives_mattergens_answers(demo_data):
    from mattergen.evaluation.metrics.structure import smact_validity as mattergen_smact_validity

    comps = _compositions()
    assert len(comps) > 900
    def outcome(fn, elements, counts):
        try:
            return fn(elements, counts)
        except TypeError:  # elements without SMACT oxidation states (noble gases)
            return TypeError

    answers = set()
    for comp in comps:
        elements, counts = zip(*comp)
        ours = outcome(mc.smact_validity, elements, counts)
        theirs = outcome(mattergen_smact_validity, elements, counts)
        # where MatterGen's raises (no oxidation states known), crygen's says invalid
        assert ours == theirs or (theirs is TypeError and ours is False), comp
        answers.add(theirs)
    assert {True, False, TypeError} <= answers


def test_fast_smact_validity_finishes_on_many_elements():
    """A 16-element sample (as an undertrained model makes) is decided in seconds."""
    import time

    elements = (1, 5, 7, 8, 9, 15, 16, 17, 26, 29, 33, 34, 35, 52, 53, 83)
    start = time.time()
    mc.smact_validity(elements, (1,) * len(elements))
    assert time.time() - start < 30


# --------------------------------------------------------------------------- sampling speed-ups


@contextlib.contextmanager
def _mattergens_sampling():
    """Inside, ``generation.generate`` samples with MatterGen's own functions: crygen's speed-ups
    are taken out and not installed again."""
    mc.uninstall_sampling_speedups()
    install = mc.install_sampling_speedups
    mc.install_sampling_speedups = lambda: None
    try:
        yield
    finally:
        mc.install_sampling_speedups = install


def _radius_graph_inputs(model_dir, n, seed):
    """The arguments GemNet passes to MatterGen's radius graph while sampling ``n`` crystals."""
    from mattergen.common.utils import data_utils

    from crygen import generation

    calls = []
    with _mattergens_sampling():
        original = data_utils.radius_graph_pbc_ocp

        def spy(*args, **kwargs):
            calls.append((args, kwargs))
            return original(*args, **kwargs)

        data_utils.radius_graph_pbc_ocp = spy
        try:
            generation.generate(model_dir, n, seed=seed, batch_size=n, record_trajectories=False, log=lambda m: None)
        finally:
            data_utils.radius_graph_pbc_ocp = original
    return original, calls


def test_per_structure_radius_graph_equals_mattergens_on_sampler_states(fast_base_model):
    """Every radius graph of a real sampling run, from noise to crystal: same edges, same
    order, same offsets and distances, bit for bit."""
    original, calls = _radius_graph_inputs(fast_base_model, 12, seed=3)
    assert len(calls) == 50
    mc.install_sampling_speedups()
    for args, kwargs in calls:
        expected = original(*args, **kwargs)
        got = mc.radius_graph_pbc_ocp_per_structure_images(*args, **kwargs)
        for e, g in zip(expected, got):
            assert e.dtype == g.dtype and e.shape == g.shape and torch.equal(e, g)
    # sub-batches too (the structures then need fewer images than the whole batch's grid)
    for args, kwargs in calls[::10]:
        assert not args  # MatterGen passes them by name
        first = int(kwargs["natoms"][:3].sum())
        sub = dict(kwargs, pos=kwargs["pos"][:first], natoms=kwargs["natoms"][:3], cell=kwargs["cell"][:3])
        for e, g in zip(original(**sub), mc.radius_graph_pbc_ocp_per_structure_images(**sub)):
            assert torch.equal(e, g)


def test_sampling_with_speedups_gives_the_same_crystals(fast_base_model):
    from crygen import generation

    with _mattergens_sampling():
        before = generation.generate(fast_base_model, 6, seed=11, batch_size=6, record_trajectories=False,
                                     log=lambda m: None)
    after = generation.generate(fast_base_model, 6, seed=11, batch_size=6, record_trajectories=False,
                                log=lambda m: None)
    for a, b in zip(before.structures, after.structures):
        assert a.composition == b.composition
        assert a.lattice.matrix == pytest.approx(b.lattice.matrix, abs=1e-6)
        assert a.frac_coords == pytest.approx(b.frac_coords, abs=1e-6)
