"""crygen.mattergen.published: published model names through the Hugging Face cache, as MatterGen's
own loader lays it out, and the one-line errors for a name found nowhere or an LFS pointer."""

from __future__ import annotations

import pytest

from crygen import mattergen as mc
from crygen.fileio import CrygenError
from crygen.mattergen.published import HF_REPOSITORY, PUBLISHED_MODELS, resolve_model_dir
from tests.helpers import PUBLISHED_MODELS as TEST_MODELS
from tests.helpers import error_line, run_stage

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4b7c7bb1a4b5e5f7d8fd5ea26c3d8e1b5ad0bd1d3ae2b1a8d6f3f1b5a2c4e6d8\nsize 179123456\n")


def hf_cache_with(cache, name, model_dir, revision="0123abc"):
    """``model_dir`` placed as huggingface_hub lays out a snapshot of MatterGen's repository."""
    repo = cache / f"models--{HF_REPOSITORY.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision / "checkpoints" / name
    (snapshot / "checkpoints").mkdir(parents=True)
    (snapshot / "config.yaml").symlink_to(model_dir / "config.yaml")
    (snapshot / "checkpoints" / "last.ckpt").symlink_to(model_dir / "checkpoints" / "last.ckpt")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_crygen_knows_the_published_names():
    assert set(PUBLISHED_MODELS) == set(TEST_MODELS)


def test_a_published_name_is_found_in_the_hf_cache(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    snapshot = hf_cache_with(cache, "chemical_system", tiny_model)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert resolve_model_dir("chemical_system") == snapshot
    assert mc.check_model_dir("chemical_system") == snapshot
    # a path is a path, even when a published name is also a folder here
    (tmp_path / "chemical_system").mkdir()
    monkeypatch.chdir(tmp_path)
    assert str(resolve_model_dir("chemical_system")) == "chemical_system"


def test_a_stage_takes_a_published_name(tmp_path, tiny_model, small_dataset):
    cache = tmp_path / "hub"
    hf_cache_with(cache, "mattergen_base", tiny_model)
    run_stage("finetune", "--base-model", "mattergen_base", "--data", small_dataset, "--out", tmp_path / "ft",
              "--max-steps", 1, "--batch-size", 4, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert mc.read_model_info(tmp_path / "ft")["base_model"].endswith("checkpoints/mattergen_base")


@pytest.mark.parametrize("offline", ["1", ""])
def test_a_name_found_nowhere_is_one_line(tmp_path, small_dataset, offline):
    """Offline, or with a network that does not answer (this machine's), one line saying where
    crygen looked and how to get the model."""
    cache = tmp_path / "empty-hub"
    proc = run_stage("finetune", "--base-model", "mattergen_base", "--data", small_dataset, "--out", tmp_path / "ft",
                     check=False, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": offline})
    line = error_line(proc)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert line.startswith(f"finetune: error: mattergen_base: not in the Hugging Face cache ({cache})"), line
    assert "huggingface-cli download microsoft/mattergen --include 'checkpoints/mattergen_base/*'" in line
    assert ("HF_HUB_OFFLINE is set" in line) == bool(offline)
    assert not (tmp_path / "ft").exists()


def test_an_lfs_pointer_is_one_line(tmp_path, tiny_model, small_dataset):
    model = tmp_path / "mattergen_base"
    (model / "checkpoints").mkdir(parents=True)
    (model / "config.yaml").write_text((tiny_model / "config.yaml").read_text())
    (model / "checkpoints" / "last.ckpt").write_text(LFS_POINTER)
    with pytest.raises(CrygenError, match="a Git LFS pointer, not the checkpoint"):
        mc.check_model_dir(model)
    proc = run_stage("generate", "--model", model, "--out", tmp_path / "results", "--num-gen", 1, check=False)
    assert proc.returncode == 2
    assert error_line(proc) == (
        f"generate: error: {model / 'checkpoints' / 'last.ckpt'}: a Git LFS pointer, not the checkpoint (the "
        "repository was cloned without git-lfs: run `git lfs pull` there, or give the model's name to download it)")
