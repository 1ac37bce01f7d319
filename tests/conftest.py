"""Shared fixtures: CPU only, float32, a deterministic seed per test, small real data and
a small real (untrained) MatterGen model."""

from __future__ import annotations

import os
import zlib

# tests run on the CPU; the DEVICE=cuda tests (test_cuda.py) hand the GPUs back to their
# subprocesses (helpers.gpu_env)
os.environ.setdefault("CRYGEN_USER_CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from tests.helpers import (BASE_MODEL, DEMO_DATA, PROPS, RANDOM_WEIGHTS_START_TIME, SAMPLEABLE_CELL_SCORE_SCALE,
                           SAMPLING_STEPS, Daemons, demo_subset, published_model_dir, require_programs, run_stage,
                           with_diffusion_steps, write_property_csv)

TINY_DIFFUSION_STEPS = 10  # sampler N must equal it; keeps sampling tests to seconds


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """``make pipeline EPOCHS=1 NUM_GEN=2`` into a new folder, and its process (shared by
    test_pipeline.py and test_report.py)."""
    from tests.helpers import make

    out = tmp_path_factory.mktemp("pipeline") / "run"
    return out, make("pipeline", "EPOCHS=1", "NUM_GEN=2", f"OUT={out}")


@pytest.fixture(scope="session")
def run_dir(pipeline_run):
    return pipeline_run[0]


@pytest.fixture(scope="session")
def local_shell_run(tmp_path_factory):
    """``make remote MACHINE=local TARGET=pipeline EPOCHS=2 NUM_GEN=2 RELAX=0``: the job folders'
    parent and the process. A second real run, differing from ``pipeline_run`` in EPOCHS and
    RELAX: test_remote.py checks the job, test_report.py compares the two runs."""
    from tests.helpers import FAKE_ACCOUNT, FAKE_SECRETS, make_remote

    folder = tmp_path_factory.mktemp("local-shell")
    return folder, make_remote(folder, "remote", "MACHINE=local", "TARGET=pipeline", "EPOCHS=2", "NUM_GEN=2",
                               "RELAX=0", "WAIT=1", env={**FAKE_ACCOUNT, **FAKE_SECRETS})


@pytest.fixture(autouse=True)
def _deterministic(request):
    import numpy as np
    import torch

    torch.set_default_dtype(torch.float32)
    seed = zlib.crc32(request.node.nodeid.encode())
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    yield


@pytest.fixture(scope="session")
def demo_data():
    if not DEMO_DATA.is_file():
        pytest.fail(f"{DEMO_DATA} missing: run `make data` (make test does)")
    return DEMO_DATA


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, demo_data):
    """40 demo crystals prepared into MatterGen's cache (36 train / 4 val)."""
    root = tmp_path_factory.mktemp("small_dataset")
    xyz = demo_subset(root / "small.extxyz", 40)
    run_stage("prepare_data", "--input", xyz, "--out", root / "data", "--seed", "1")
    return root / "data"


@pytest.fixture(scope="session")
def property_data(tmp_path_factory, demo_data):
    """30 demo crystals with a scalar (band_gap) and a binary (solid_electrolyte) property."""
    root = tmp_path_factory.mktemp("property_data")
    data = write_property_csv(root / "props.csv")
    run_stage("prepare_data", "--input", data, "--out", root / "data", "--properties", PROPS)
    return root / "data"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, small_dataset):
    """A MatterGen model dir with a tiny, randomly initialised GemNet denoiser."""
    import torch
    from hydra.utils import instantiate

    from crygen import mattergen as mc

    root = tmp_path_factory.mktemp("tiny_model")
    mc.ensure_mattergen_files()
    torch.manual_seed(0)
    denoiser = mc.denoiser_config(hidden_dim=16, num_blocks=1, max_neighbors=8, emb_size_trip=8,
                                  emb_size_bil_trip=8, num_radial=8)
    lm = mc.lightning_module_config(mc.diffusion_module_config(denoiser, TINY_DIFFUSION_STEPS))
    config = mc.model_config(lm, mc.data_module_config(small_dataset, batch_size=8))
    module = instantiate(config["lightning_module"])
    ckpt = root / "init.ckpt"
    torch.save({"state_dict": module.state_dict(), "config": config}, ckpt)
    return mc.write_model_dir(root / "model", config, ckpt,
                              {"num_atoms_distribution": {"2": 0.5, "4": 0.5}})


@pytest.fixture(scope="session")
def fast_base_model(tmp_path_factory):
    """The embedded base model, sampled with 25 instead of its 250 reverse steps.

    The denoiser is trained on continuous time, so a coarser schedule is the same model,
    sampled faster (and less well): tests check mechanics, ``test_base_model`` quality."""
    import shutil

    import yaml

    from crygen import mattergen as mc

    mc.check_model_dir(BASE_MODEL)
    dest = tmp_path_factory.mktemp("fast_base") / "model"
    shutil.copytree(BASE_MODEL, dest)
    config = mc.load_model_config(dest)
    d3pm = config["lightning_module"]["diffusion_module"]["corruption"]["discrete_corruptions"]["atomic_numbers"]
    d3pm["d3pm"]["schedule"]["num_steps"] = 25
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """name -> a model dir from MatterGen's published config.yaml, random weights of the real
    size that the sampler can run on (tests/helpers.py: SAMPLEABLE_CELL_SCORE_SCALE), built once."""
    root = tmp_path_factory.mktemp("published")
    built = {}

    def get(name: str):
        if name not in built:
            built[name] = published_model_dir(name, root / name, cell_score_scale=SAMPLEABLE_CELL_SCORE_SCALE)
        return built[name]

    return get


@pytest.fixture(scope="session")
def real_size_model(tmp_path_factory, published):
    """MatterGen's mattergen_base (512 wide, 4 blocks, 50 neighbours, cutoff 7), random weights,
    sampled in the last half of a 10-step schedule."""
    return with_diffusion_steps(published("mattergen_base"), tmp_path_factory.mktemp("real_size") / "model",
                                SAMPLING_STEPS, start_time=RANDOM_WEIGHTS_START_TIME)


@pytest.fixture(scope="module")
def default_reference():
    """The embedded default reference as MatterGen's dataset."""
    from crygen.reference import load_reference

    return load_reference("default")[0]


@pytest.fixture(scope="session")
def daemons(tmp_path_factory):
    """An sshd and a one-node Slurm on loopback (the remote tests' cluster), started once."""
    require_programs("sshd", "ssh-keygen", "munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch")
    d = Daemons(tmp_path_factory.mktemp("daemons"))
    try:
        conf = d.start_slurm()
        yield d, d.start_sshd(slurm_conf=conf)
    finally:
        d.stop()
