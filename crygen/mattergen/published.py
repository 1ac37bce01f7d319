"""Where a model dir comes from: a path, or one of MatterGen's published model names.

MatterGen users name models as MatterGen's own loader does (``mattergen_base``,
``chemical_system``, ...): MatterGen fetches ``checkpoints/<name>/`` of the Hugging Face
repository ``microsoft/mattergen`` into the Hugging Face cache, and so does crygen, into the
same cache, so a model either tool downloaded serves both. Without a network the cache is
read offline; a name found nowhere is a one-line error saying where crygen looked and how
to get the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from crygen.fileio import CrygenError, one_line

HF_REPOSITORY = "microsoft/mattergen"
PUBLISHED_MODELS = (
    "mattergen_base", "mp_20_base", "chemical_system", "chemical_system_energy_above_hull",
    "dft_band_gap", "dft_mag_density", "dft_mag_density_hhi_score", "ml_bulk_modulus", "space_group",
)
# the first bytes of a Git LFS pointer file (what a clone without git-lfs holds instead)
LFS_POINTER_PREFIX = b"version https://git-lfs"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (HF_HUB_CACHE, HF_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_model_dir(name: str, cache: Path | None = None) -> Path | None:
    """``snapshots/<revision>/checkpoints/<name>`` in the cache: the revision ``refs/main``
    names first, then any other snapshot holding the model, newest first."""
    repo = (cache or hf_cache_dir()) / f"models--{HF_REPOSITORY.replace('/', '--')}"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    main = repo / "refs" / "main"
    preferred = [snapshots / main.read_text().strip()] if main.is_file() else []
    others = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for snapshot in preferred + others:
        candidate = snapshot / "checkpoints" / name
        if (candidate / "config.yaml").is_file() and (candidate / "checkpoints" / "last.ckpt").exists():
            return candidate
    return None


def download_model_dir(name: str) -> Path:
    """The two files MatterGen's ``MatterGenCheckpointInfo.from_hf_hub`` fetches, into the cache."""
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo_id=HF_REPOSITORY, filename=f"checkpoints/{name}/checkpoints/last.ckpt")
    return Path(hf_hub_download(repo_id=HF_REPOSITORY, filename=f"checkpoints/{name}/config.yaml")).parent


def is_published_name(spec: str | os.PathLike) -> bool:
    return str(spec) in PUBLISHED_MODELS and not Path(spec).exists()


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """A model dir's path from what a user wrote: a path is itself; a published model name is
    found in the Hugging Face cache or downloaded into it."""
    if not is_published_name(spec):
        return Path(spec)
    name = str(spec)
    cache = hf_cache_dir()
    found = cached_model_dir(name, cache)
    if found is not None:
        return found
    how = (f"get it on a machine with network access (huggingface-cli download {HF_REPOSITORY} "
           f"--include 'checkpoints/{name}/*') and copy {cache} here, or give the model dir's path")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise CrygenError(name, f"not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; {how}")
    try:
        return download_model_dir(name)
    except Exception as e:  # no network, refused, rate-limited, disk full: each says why
        raise CrygenError(name, f"not in the Hugging Face cache ({cache}) and the download failed "
                                f"({one_line(e)}); {how}") from None


def is_lfs_pointer(path: str | os.PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
