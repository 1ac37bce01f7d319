"""crygen's MatterGen layer (crygen.mattergen) against MatterGen's own loaders, and the old
module path (crygen.mattergen_compat) that model dirs written before it name."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from crygen import mattergen as mc
from crygen.mattergen import speedups, validity
from crygen.fileio import CrygenError
from tests.helpers import counting_torch_load


def test_gemnet_scale_file_is_installed_where_gemnet_reads_it():
    path = mc.ensure_mattergen_files()
    from mattergen.common.utils.globals import MODELS_PROJECT_ROOT

    assert path == MODELS_PROJECT_ROOT / "common" / "gemnet" / "gemnet-dT.json"
    values = json.loads(path.read_text())
    assert values["TripInteraction_1_had_rbf"] == pytest.approx(18.8736, rel=1e-4)


def test_model_dir_loads_in_mattergens_own_loader(tiny_model, monkeypatch):
    """MatterGen's MatterGenCheckpointInfo + load_model_diffusion accept crygen's model dir, and
    crygen's build, which skips the orthogonal draws the checkpoint overwrites, holds the same
    weights; the draw is torch's own again afterwards."""
    from mattergen.common.utils.eval_utils import load_model_diffusion

    draws = []
    torchs = torch.nn.init.orthogonal_
    monkeypatch.setattr(torch.nn.init, "orthogonal_", lambda t, *a, **k: draws.append(t.shape) or torchs(t, *a, **k))
    info = mc.checkpoint_info(tiny_model)
    assert info.checkpoint_path.endswith("checkpoints/last.ckpt")
    module = load_model_diffusion(info)
    mattergens_draws = len(draws)
    assert mattergens_draws > 10
    ours = mc.load_lightning_module(tiny_model)
    assert len(draws) == mattergens_draws  # none while crygen built its module
    load_model_diffusion(info)
    assert len(draws) == 2 * mattergens_draws
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


def test_a_model_dir_checks_cheaply_and_reads_each_file_once(tiny_model, monkeypatch):
    loads = counting_torch_load(monkeypatch)
    model = mc.ModelDir(tiny_model)
    assert model.path == tiny_model and loads == []  # the checks read no checkpoint
    assert model.config == mc.load_model_config(tiny_model) and model.adaptations == []
    assert model.info == mc.read_model_info(tiny_model)
    monkeypatch.setattr(type(model.config_path), "read_text", lambda *a, **k: pytest.fail("read again"))
    model.config, model.info  # noqa: B018 (from memory)
    assert model.verify() is model and len(loads) == 1
    state = model.checkpoint["state_dict"]
    module = model.lightning_module()
    assert len(loads) == 1  # the module was built from the checkpoint read once
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert mc.ModelDir.of(model) is model and str(model) == str(tiny_model)


def test_a_model_dir_that_is_none_is_one_line_when_constructed(tmp_path, tiny_model):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "config.yaml").write_text("trainer: {}\n")
    with pytest.raises(CrygenError, match="not a MatterGen config"):
        mc.ModelDir(bad)
    (bad / "config.yaml").write_text((tiny_model / "config.yaml").read_text())
    (bad / "checkpoints" / "last.ckpt").write_text("not a checkpoint")
    model = mc.ModelDir(bad)  # the checkpoint is read when first needed, and judged then
    with pytest.raises(CrygenError, match="not a PyTorch checkpoint"):
        model.verify()


def test_configs_written_before_the_package_still_load(tiny_model, small_dataset):
    """Model dirs written before crygen.mattergen name ``crygen.mattergen_compat.<name>`` in
    their config.yaml: Hydra (as MatterGen's loader and crygen use it) still finds each."""
    import importlib

    import yaml
    from hydra.utils import get_class, get_method, instantiate

    from crygen.mattergen import configs, properties

    compat = importlib.import_module("crygen.mattergen_compat")
    assert compat.crystal_dataset_from_cache is configs.crystal_dataset_from_cache
    assert get_method("crygen.mattergen_compat.crystal_dataset_from_cache") is configs.crystal_dataset_from_cache
    for name in ("RegisteredPropertyEmbedding", "CategoricalEmbedding"):
        assert get_class(f"crygen.mattergen_compat.{name}") is getattr(properties, name)
    assert compat.check_model_dir is mc.check_model_dir and compat.smact_validity is validity.smact_validity

    config = mc.adapter_config(mc.load_model_config(tiny_model), {
        "band_gap": {"kind": mc.FLOAT}, "solid_electrolyte": {"kind": mc.CATEGORICAL, "categories": ["no", "yes"]}})
    config = mc.with_data_module(config, mc.data_module_config(small_dataset, batch_size=4, properties=["band_gap"]))
    new = yaml.safe_dump(config)
    assert "crygen.mattergen_compat" not in new  # configs written now name the package's modules
    assert new.count("crygen.mattergen.properties.") == 3 and new.count("crygen.mattergen.configs.") == 2
    old = yaml.safe_load(new.replace("crygen.mattergen.properties.", "crygen.mattergen_compat.")
                         .replace("crygen.mattergen.configs.", "crygen.mattergen_compat."))
    torch.manual_seed(0)
    module = instantiate(old["lightning_module"])
    adapt = module.diffusion_module.model.property_embeddings_adapt
    assert isinstance(adapt["band_gap"], properties.RegisteredPropertyEmbedding)
    assert isinstance(adapt["solid_electrolyte"].conditional_embedding_module, properties.CategoricalEmbedding)
    split = dict(old["data_module"]["train_dataset"], properties=[], dataset_transforms=[])
    new_split = dict(split, _target_="crygen.mattergen.configs.crystal_dataset_from_cache")
    assert len(instantiate(split)) == len(instantiate(new_split)) > 0


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
        ours = outcome(validity.smact_validity, elements, counts)
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
    validity.smact_validity(elements, (1,) * len(elements))
    assert time.time() - start < 30


# --------------------------------------------------------------------------- sampling speed-ups


@contextlib.contextmanager
def _mattergens_sampling():
    """Inside, ``generation.generate`` samples with MatterGen's own functions: it applies none
    of crygen's speed-ups."""
    applied = speedups.SAMPLING
    speedups.SAMPLING = ()
    try:
        yield
    finally:
        speedups.SAMPLING = applied


def _sampler_calls(model_dir, n, seed, owner, name):
    """The arguments of every call to ``owner.name`` while MatterGen's own functions sample
    ``n`` crystals, and the original function."""
    from crygen import generation

    calls = []
    with _mattergens_sampling():
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            calls.append((args, kwargs))
            return original(*args, **kwargs)

        setattr(owner, name, spy)
        try:
            generation.generate(model_dir, n, seed=seed, batch_size=n, record_trajectories=False, log=lambda m: None)
        finally:
            setattr(owner, name, original)
    return original, calls


@pytest.fixture(params=["embedded", "real_size"])
def sampled(request):
    """(model dir, crystals per run, denoiser calls per run, interaction blocks): the embedded
    model (64 wide, 2 blocks, 12 neighbours, 25 steps) and MatterGen's real size (512 wide, 4
    blocks, 50 neighbours, cutoff 7; random weights, 10 steps)."""
    if request.param == "embedded":
        return request.getfixturevalue("fast_base_model"), 12, 50, 2
    return request.getfixturevalue("real_size_model"), 4, 20, 4


def test_per_pair_radius_graph_equals_mattergens_on_sampler_states(sampled, monkeypatch):
    """Every radius graph of a real sampling run, from noise to crystal: same edges, same
    order, same offsets and distances, bit for bit."""
    from mattergen.common.utils import data_utils

    model, n, denoiser_calls, _ = sampled
    original, calls = _sampler_calls(model, n, 3, data_utils, "radius_graph_pbc_ocp")
    assert len(calls) == denoiser_calls
    for args, kwargs in calls:
        expected = original(*args, **kwargs)
        got = speedups.radius_graph_pbc_ocp_per_pair_images(*args, **kwargs)
        for e, g in zip(expected, got):
            assert e.dtype == g.dtype and e.shape == g.shape and torch.equal(e, g)
    # sub-batches too, down to one structure (each needs fewer images than the batch's grid)
    for args, kwargs in calls[::10]:
        assert not args  # MatterGen passes them by name
        for k in (1, 3):
            first = int(kwargs["natoms"][:k].sum())
            sub = dict(kwargs, pos=kwargs["pos"][:first], natoms=kwargs["natoms"][:k], cell=kwargs["cell"][:k])
            for e, g in zip(original(**sub), speedups.radius_graph_pbc_ocp_per_pair_images(**sub)):
                assert torch.equal(e, g)
    # and when big batches make it work through the pairs in chunks
    monkeypatch.setattr(speedups, "_CANDIDATES_PER_CHUNK", 5000)
    for args, kwargs in calls[::10]:
        for e, g in zip(original(**kwargs), speedups.radius_graph_pbc_ocp_per_pair_images(**kwargs)):
            assert torch.equal(e, g)


def test_bilinear_in_one_product_is_as_exact_as_mattergens(sampled):
    """Every call of GemNet's bilinear layer in a real sampling run, against the same layer in
    float64: crygen's one product, summed in another order, is within float32 rounding of the
    exact result, as MatterGen's own is (not bit-identical to MatterGen's, which is not on offer
    here: MatterGen's scores already change between one and two threads, and its sampled
    crystals with them)."""
    from mattergen.common.gemnet.layers.efficient import EfficientInteractionBilinear

    model, n, denoiser_calls, blocks = sampled
    original, calls = _sampler_calls(model, n, 3, EfficientInteractionBilinear, "forward")
    assert len(calls) == blocks * denoiser_calls
    errors = {"mattergen": [], "crygen": []}
    for (layer, basis, m, id_reduce, id_ragged_idx), _ in calls:
        with torch.no_grad():
            results = {
                "mattergen": original(layer, basis, m, id_reduce, id_ragged_idx),
                "crygen": speedups.efficient_bilinear_in_one_product(layer, basis, m, id_reduce, id_ragged_idx),
            }
            weight = layer.weight.data
            layer.weight.data = weight.double()
            try:
                exact = original(layer, tuple(b.double() for b in basis), m.double(), id_reduce, id_ragged_idx)
            finally:
                layer.weight.data = weight
        scale = exact.abs().max()
        for name, result in results.items():
            assert result.dtype == torch.float32 and result.shape == exact.shape
            errors[name].append(float((result.double() - exact).abs().max() / scale))
    print("largest error relative to the largest output: "
          + ", ".join(f"{name} {max(e):.1e}" for name, e in errors.items()))
    assert max(errors["mattergen"]) < 1e-6
    assert max(errors["crygen"]) < 2e-6  # 512-term sums: a few float32 ulps of the largest output


def test_denoiser_scores_with_crygens_bilinear_match_mattergens(sampled):
    """The denoiser's scores at every step of a real sampling run, with MatterGen's bilinear layer
    and with crygen's: a wrong layer would change them at order one; they differ at 1e-5."""
    from mattergen.common.gemnet.layers.efficient import EfficientInteractionBilinear
    from mattergen.denoiser import GemNetTDenoiser

    model, n, denoiser_calls, _ = sampled
    module = mc.load_lightning_module(model)
    _, calls = _sampler_calls(model, n, 3, GemNetTDenoiser, "forward")
    assert len(calls) == denoiser_calls
    original = EfficientInteractionBilinear.forward
    worst = 0.0
    try:
        for (_, x, t), _ in calls:
            with torch.no_grad():
                EfficientInteractionBilinear.forward = original
                expected = module.diffusion_module.model(x, t)
                EfficientInteractionBilinear.forward = speedups.efficient_bilinear_in_one_product
                got = module.diffusion_module.model(x, t)
            for field in ("pos", "cell", "atomic_numbers"):
                e, g = expected[field], got[field]
                scored = torch.isfinite(e) & (e.abs() < 1e9)  # disallowed atom types get -inf / 1e10
                assert torch.equal(e[~scored], g[~scored])
                scale = e[scored].abs().max()
                assert scale > 0
                worst = max(worst, float((e[scored] - g[scored]).abs().max() / scale))
    finally:
        EfficientInteractionBilinear.forward = original
    print(f"largest difference of the scores, relative to their largest magnitude: {worst:.1e}")
    assert worst < 1e-4


def test_sampling_with_the_exact_speedup_gives_the_same_crystals(fast_base_model, monkeypatch):
    """With only the bit-for-bit speed-up (the radius graph), sampling draws MatterGen's crystals."""
    from crygen import generation

    with _mattergens_sampling():
        before = generation.generate(fast_base_model, 6, seed=11, batch_size=6, record_trajectories=False,
                                     log=lambda m: None)
    monkeypatch.setattr(speedups, "SAMPLING", ("sampling.radius_graph",))
    after = generation.generate(fast_base_model, 6, seed=11, batch_size=6, record_trajectories=False,
                                log=lambda m: None)
    from mattergen.common.utils import data_utils

    assert data_utils.radius_graph_pbc_ocp is not speedups.radius_graph_pbc_ocp_per_pair_images  # only while sampling
    for a, b in zip(before.structures, after.structures):
        assert a.composition == b.composition
        assert a.lattice.matrix == pytest.approx(b.lattice.matrix, abs=1e-6)
        assert a.frac_coords == pytest.approx(b.frac_coords, abs=1e-6)
