"""A MatterGen model dir: ``config.yaml``, ``checkpoints/last.ckpt`` and, where crygen wrote
it, ``crygen_model.json`` (the facts crygen keeps beside them).

:class:`ModelDir` is one such dir, checked once when constructed and read once: it is built
where a stage gets a model dir from its user and passed down, so nothing below re-checks the
path or reads a file again. Its config is adapted to the pinned stack when read
(``crygen.mattergen.adaptations``); a published model's name is resolved first
(``crygen.mattergen.published``). The functions below it are the path-taking API of before,
each a ModelDir used once.
"""

from __future__ import annotations

import json
import os
import shutil
from copy import deepcopy
from pathlib import Path
from typing import Any

from crygen.fileio import CrygenError, atomic_path, dumps_json
from crygen.patches import applied

CRYGEN_MODEL_INFO = "crygen_model.json"  # extra facts crygen keeps beside config.yaml
_LFS_POINTER_PROBLEM = ("a Git LFS pointer, not the checkpoint (the repository was cloned without "
                        "git-lfs: run `git lfs pull` there, or give the model's name to download it)")


class ModelDir:
    """A MatterGen model dir, from its path or a published model's name.

    Constructing one checks what can be checked without reading the checkpoint: the dir,
    both files, the checkpoint no Git LFS pointer, ``config.yaml`` a MatterGen config; each
    problem is a one-line :class:`CrygenError`. ``verify=True`` reads the checkpoint as well
    (where the original ``check_model_dir`` read it). :attr:`config`, :attr:`info` and
    :attr:`checkpoint` are read when first asked for and kept (config and info are handed
    out as copies); the checkpoint is let go once :meth:`lightning_module` has put its
    weights into a module, as MatterGen's loader does.
    """

    def __init__(self, spec: str | os.PathLike, *, verify: bool = False, _check: bool = True) -> None:
        from crygen.mattergen.published import resolve_model_dir

        self.path = resolve_model_dir(spec) if _check else Path(spec)
        self._raw_config: dict[str, Any] | None = None
        self._config: tuple[dict[str, Any], list[str]] | None = None
        self._info: dict[str, Any] | None = None
        self._checkpoint: dict[str, Any] | None = None
        if _check:
            self._check(verify)

    @classmethod
    def of(cls, model: ModelDir | str | os.PathLike, *, verify: bool = False) -> ModelDir:
        """``model`` itself if it is a ModelDir (verified if asked), else a new one."""
        if isinstance(model, ModelDir):
            return model.verify() if verify else model
        return cls(model, verify=verify)

    @classmethod
    def unchecked(cls, path: ModelDir | str | os.PathLike) -> ModelDir:
        """A ModelDir for a path taken as it is, no check made (the reads still fail loudly)."""
        return path if isinstance(path, ModelDir) else cls(path, _check=False)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "last.ckpt"

    @property
    def info_path(self) -> Path:
        return self.path / CRYGEN_MODEL_INFO

    def _check(self, verify: bool) -> None:
        import yaml

        if not self.path.is_dir():
            raise CrygenError(self.path, "model directory not found")
        if not self.config_path.is_file():
            raise CrygenError(self.config_path, "missing: a MatterGen model dir needs config.yaml")
        if not self.checkpoint_path.is_file():
            raise CrygenError(self.checkpoint_path, "missing: a MatterGen model dir needs checkpoints/last.ckpt")
        if verify:
            self.verify()  # validates
        else:
            _refuse_lfs_pointer(self.checkpoint_path)
        try:
            cfg = self._read_raw_config()
        except yaml.YAMLError as e:
            raise CrygenError(self.config_path, f"not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(cfg, dict) or "lightning_module" not in cfg:
            raise CrygenError(self.config_path, "not a MatterGen config (no lightning_module section)")

    def _read_raw_config(self) -> Any:
        if self._raw_config is None:
            import yaml

            self._raw_config = yaml.safe_load(self.config_path.read_text())
        return self._raw_config

    def verify(self) -> ModelDir:
        """Read the checkpoint now (a one-line error if it is none), and keep it."""
        self.checkpoint  # noqa: B018 (read for its check)
        return self

    @property
    def checkpoint(self) -> dict[str, Any]:
        """The torch checkpoint (read once; let go when a module is built from it)."""
        if self._checkpoint is None:
            self._checkpoint = read_checkpoint(self.checkpoint_path)
        return self._checkpoint

    def _read_config(self) -> tuple[dict[str, Any], list[str]]:
        if self._config is None:
            from crygen.mattergen.adaptations import adapt_config

            config = deepcopy(self._read_raw_config())
            self._config = config, adapt_config(config)
        return self._config

    @property
    def config(self) -> dict[str, Any]:
        """The config as the pinned stack accepts it (a copy: change it freely)."""
        return deepcopy(self._read_config()[0])

    @property
    def adaptations(self) -> list[str]:
        """The names of the adaptations the config needed (crygen.mattergen.adaptations)."""
        return list(self._read_config()[1])

    @property
    def info(self) -> dict[str, Any]:
        """``crygen_model.json`` ({} where there is none; a copy)."""
        if self._info is None:
            self._info = json.loads(self.info_path.read_text()) if self.info_path.is_file() else {}
        return deepcopy(self._info)

    def checkpoint_info(self):
        """MatterGen's own handle on the dir (``MatterGenCheckpointInfo``)."""
        from mattergen.common.utils.data_classes import MatterGenCheckpointInfo

        from crygen.mattergen.files import ensure_mattergen_files

        ensure_mattergen_files()
        return MatterGenCheckpointInfo(model_path=self.path.resolve(), load_epoch="last")

    def lightning_module(self, device: str = "cpu"):
        """The model, built as MatterGen's ``load_from_checkpoint_and_config`` builds it (its
        class from the config, the checkpoint's weights with strict keys), on ``device``."""
        from hydra.utils import instantiate
        from mattergen.diffusion.lightning_module import DiffusionLightningModule
        from omegaconf import OmegaConf

        from crygen.mattergen.files import ensure_mattergen_files

        ensure_mattergen_files()
        config = OmegaConf.create(self._read_config()[0])
        with applied("model.no_init_before_load"):
            module = instantiate(config.lightning_module)
        assert isinstance(module, DiffusionLightningModule)
        module.load_state_dict(self.checkpoint["state_dict"], strict=True)
        self._checkpoint = None  # the module holds the weights now
        return module.to(device).eval()

    @classmethod
    def write(cls, dest: str | os.PathLike, config: dict[str, Any], weights: ModelDir,
              info: dict[str, Any] | None = None) -> ModelDir:
        """``dest`` written as a model dir with ``config`` and the checkpoint of ``weights``
        (copied; a checkpoint ``weights`` has read already is not read again)."""
        write_model_dir(dest, config, weights.checkpoint_path, info)
        written = cls(dest)
        written._checkpoint = weights._checkpoint  # the same bytes
        return written


def _orthogonal_skipped(tensor, *args, **kwargs):
    """``torch.nn.init.orthogonal_`` while a module is built for a checkpoint's weights: the
    tensor as it is (patch ``model.no_init_before_load``)."""
    return tensor


def _refuse_lfs_pointer(path: Path) -> None:
    from crygen.mattergen.published import is_lfs_pointer

    if is_lfs_pointer(path):
        raise CrygenError(path, _LFS_POINTER_PROBLEM)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint, read (on the CPU), or a one-line error saying what the file is."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    _refuse_lfs_pointer(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CrygenError(path, f"not a PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CrygenError(path, "not a Lightning checkpoint (no state_dict)")
    return ckpt


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """A MatterGen model dir's path, checked, its checkpoint read (``ModelDir(..., verify=True)``):
    anything else is a one-line error. A published model name is resolved first."""
    return ModelDir(model_dir, verify=True).path


def load_model_config(model_dir: ModelDir | str | os.PathLike) -> dict[str, Any]:
    """A model dir's config as the pinned stack accepts it (crygen.mattergen.adaptations)."""
    return ModelDir.unchecked(model_dir).config


def read_model_config(model_dir: ModelDir | str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """A model dir's config, adapted, and the names of the adaptations it needed."""
    model = ModelDir.unchecked(model_dir)
    return model.config, model.adaptations


def read_model_info(model_dir: ModelDir | str | os.PathLike) -> dict[str, Any]:
    return ModelDir.unchecked(model_dir).info


def checkpoint_info(model_dir: ModelDir | str | os.PathLike):
    return ModelDir.unchecked(model_dir).checkpoint_info()


def load_lightning_module(model_dir: ModelDir | str | os.PathLike, device: str = "cpu"):
    """Load a model dir the way MatterGen's generator does (its own classes, strict keys)."""
    return ModelDir.of(model_dir, verify=True).lightning_module(device)


def write_model_dir(
    dest: str | os.PathLike,
    config: dict[str, Any],
    checkpoint: str | os.PathLike,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``dest`` as a MatterGen model dir (config.yaml + checkpoints/last.ckpt) atomically."""
    import yaml

    dest = Path(dest)
    with atomic_path(dest) as tmp:
        (tmp / "checkpoints").mkdir(parents=True)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copy2(checkpoint, tmp / "checkpoints" / "last.ckpt")
        if info is not None:
            (tmp / CRYGEN_MODEL_INFO).write_text(dumps_json(info))
    return dest
