"""Everything MatterGen's PyPI wheel (mattergen==1.0.3) lacks, in one place.

The wheel is code only: it has no Hydra ``conf/``, no ``sampling_conf/`` and no
``common/gemnet/gemnet-dT.json``, which GemNet reads whenever it is built. This module
provides them, written for crygen:

* :func:`ensure_mattergen_files` puts the GemNet-dT scale factors where GemNet looks.
  They are only initial values: every checkpoint carries its own as (frozen) parameters.
* :func:`model_config` / :func:`data_module_config` build MatterGen configs (the same
  ``_target_`` classes and keys as MatterGen's own ``config.yaml``), so the model dirs crygen
  writes load in MatterGen's ``MatterGenCheckpointInfo`` / ``CrystalGenerator`` and MatterGen's
  own model dirs load in crygen (:func:`load_model_config` adapts a published config to the
  pinned stack when it is read: ``crygen.config_adaptations``; :func:`check_model_dir`
  resolves a published model's name: ``crygen.model_source``).
* ``crygen/sampling_conf/default.yaml`` is the predictor-corrector sampling config;
  :func:`sampling_overrides` sets its step count to the model's D3PM step count, which
  MatterGen's sampler requires.
* :func:`adapter_config` / :func:`register_properties`: property conditioning on any
  property name, where MatterGen accepts only those in its hard-coded list, added to a base
  that may already be conditioned; :func:`model_property_definitions` says what conditions a
  model dir takes, MatterGen's published ones included.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from copy import deepcopy
from pathlib import Path
from typing import Any

from crygen.fileio import CrygenError, atomic_path, dumps_json

SAMPLING_CONFIG_DIR = Path(__file__).resolve().parent / "sampling_conf"

# Published GemNet-dT scale factors (OCP / fairchem, ``gemnet-dT.json``); MatterGen ships none.
GEMNET_DT_SCALE_FACTORS = {
    "comment": "GemNet-dT scaling factors (initial values; checkpoints store their own)",
    "TripInteraction_1_had_rbf": 18.873615264892578,
    "TripInteraction_1_sum_cbf": 7.996850490570068,
    "AtomUpdate_1_sum": 1.220463752746582,
    "TripInteraction_2_had_rbf": 16.10817527770996,
    "TripInteraction_2_sum_cbf": 7.614634037017822,
    "AtomUpdate_2_sum": 0.9690994620323181,
    "TripInteraction_3_had_rbf": 15.01930046081543,
    "TripInteraction_3_sum_cbf": 7.025179862976074,
    "AtomUpdate_3_sum": 0.8903237581253052,
    "OutBlock_0_sum": 1.6437848806381226,
    "OutBlock_0_had": 16.161039352416992,
    "OutBlock_1_sum": 1.1077653169631958,
    "OutBlock_1_had": 13.54678726196289,
    "OutBlock_2_sum": 0.9477927684783936,
    "OutBlock_2_had": 12.754337310791016,
    "OutBlock_3_sum": 0.9059251546859741,
    "OutBlock_3_had": 13.484951972961426,
}

# Mean atomic number density (atoms / A^3) MatterGen uses as the lattice prior's limit.
AVERAGE_DENSITY = 0.05771451654022283

CRYGEN_MODEL_INFO = "crygen_model.json"  # extra facts crygen keeps beside config.yaml


def mattergen_package_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mattergen")
    if spec is None or spec.origin is None:
        raise CrygenError(None, "mattergen is not installed; run `make setup`")
    return Path(spec.origin).parent


def ensure_mattergen_files() -> Path:
    """Write the GemNet scale-factor file into the installed package if it is missing."""
    target = mattergen_package_dir() / "common" / "gemnet" / "gemnet-dT.json"
    if not target.exists():
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(GEMNET_DT_SCALE_FACTORS, indent=1))
    return target


# --------------------------------------------------------------------------- configs


def denoiser_config(
    hidden_dim: int = 512,
    num_blocks: int = 4,
    cutoff: float = 7.0,
    max_neighbors: int = 50,
    emb_size_trip: int = 64,
    emb_size_bil_trip: int = 64,
    num_radial: int = 128,
) -> dict[str, Any]:
    """MatterGen's GemNet-T denoiser; the defaults are MatterGen's published sizes."""
    return {
        "_target_": "mattergen.denoiser.GemNetTDenoiser",
        "hidden_dim": hidden_dim,
        "denoise_atom_types": True,
        "atom_type_diffusion": "mask",
        "property_embeddings": {},
        "property_embeddings_adapt": {},
        "element_mask_func": {"_target_": "mattergen.denoiser.mask_disallowed_elements", "_partial_": True},
        "gemnet": {
            "_target_": "mattergen.common.gemnet.gemnet.GemNetT",
            "num_targets": 1,
            "latent_dim": hidden_dim,  # hidden_dim * (1 + number of property embeddings)
            "atom_embedding": {
                "_target_": "mattergen.common.gemnet.layers.embedding_block.AtomEmbedding",
                "emb_size": hidden_dim,
                "with_mask_type": True,
            },
            "emb_size_atom": hidden_dim,
            "emb_size_edge": hidden_dim,
            "emb_size_trip": emb_size_trip,
            "emb_size_bil_trip": emb_size_bil_trip,
            "num_radial": num_radial,
            "max_neighbors": max_neighbors,
            "max_cell_images_per_dim": 5,
            "cutoff": cutoff,
            "num_blocks": num_blocks,
            "regress_stress": True,
            "otf_graph": True,
        },
    }


def diffusion_module_config(
    model: dict[str, Any], diffusion_steps: int = 1000, atom_type_loss_weight: float = 1.0
) -> dict[str, Any]:
    """MatterGen's default corruption (wrapped VE-SDE on fractional coordinates, lattice
    VP-SDE on the cell, masked D3PM on atom types) and loss."""
    return {
        "_target_": "mattergen.diffusion.diffusion_module.DiffusionModule",
        "model": model,
        "corruption": {
            "_target_": "mattergen.diffusion.corruption.multi_corruption.MultiCorruption",
            "sdes": {
                "pos": {
                    "_target_": "mattergen.common.diffusion.corruption.NumAtomsVarianceAdjustedWrappedVESDE",
                    "sigma_max": 5.0,
                    "wrapping_boundary": 1.0,
                },
                "cell": {
                    "_target_": "mattergen.common.diffusion.corruption.LatticeVPSDE.from_vpsde_config",
                    "vpsde_config": {
                        "beta_min": 0.1,
                        "beta_max": 20,
                        "limit_density": AVERAGE_DENSITY,
                        "limit_var_scaling_constant": 0.25,
                    },
                },
            },
            "discrete_corruptions": {
                "atomic_numbers": {
                    "_target_": "mattergen.diffusion.corruption.d3pm_corruption.D3PMCorruption",
                    "d3pm": {
                        "_target_": "mattergen.diffusion.d3pm.d3pm.MaskDiffusion",
                        "dim": 101,
                        "schedule": {
                            "_target_": "mattergen.diffusion.d3pm.d3pm.create_discrete_diffusion_schedule",
                            "kind": "standard",
                            "num_steps": diffusion_steps,
                        },
                    },
                    "offset": 1,
                }
            },
        },
        "loss_fn": {
            "_target_": "mattergen.common.loss.MaterialsLoss",
            "reduce": "sum",
            "include_pos": True,
            "include_cell": True,
            "include_atomic_numbers": True,
            "d3pm_hybrid_lambda": 0.01,
            "weights": {"pos": 1.0, "cell": 1.0, "atomic_numbers": atom_type_loss_weight},
        },
        "pre_corruption_fn": {
            "_target_": "mattergen.property_embeddings.SetEmbeddingType",
            "p_unconditional": 0.2,
            "dropout_fields_iid": False,
        },
    }


def lightning_module_config(diffusion_module: dict[str, Any], lr: float = 1e-4) -> dict[str, Any]:
    return {
        "_target_": "mattergen.diffusion.lightning_module.DiffusionLightningModule",
        "optimizer_partial": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": lr},
        "scheduler_partials": [
            {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                    "_partial_": True,
                    "factor": 0.6,
                    "patience": 100,
                    "min_lr": 1e-6,
                },
                "interval": "epoch",
                "frequency": 1,
                "monitor": "loss_train",
                "strict": True,
            }
        ],
        "diffusion_module": diffusion_module,
    }


def data_module_config(
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    properties: list[str] | None = None,
    max_epochs: int = 1,
) -> dict[str, Any]:
    """MatterGen's ``CrystDataModule`` over a dataset cache written by ``prepare_data``."""
    cache_dir = Path(cache_dir).resolve()
    properties = list(properties or [])

    def split(name: str) -> dict[str, Any]:
        return {
            "_target_": f"{__name__}.crystal_dataset_from_cache",
            "cache_path": str(cache_dir / name),
            "properties": properties,
            "transforms": [
                {"_target_": "mattergen.common.data.transform.symmetrize_lattice", "_partial_": True},
                {"_target_": "mattergen.common.data.transform.set_chemical_system_string", "_partial_": True},
            ],
            # with properties, structures missing a value stay: they train the unconditional branch
            "dataset_transforms": [] if properties else [
                {"_target_": "mattergen.common.data.dataset_transform.filter_sparse_properties", "_partial_": True}
            ],
        }

    return {
        "_target_": "mattergen.common.data.datamodule.CrystDataModule",
        "_recursive_": True,
        "properties": properties,
        "average_density": AVERAGE_DENSITY,
        "root_dir": str(cache_dir),
        "train_dataset": split("train"),
        "val_dataset": split("val"),
        "num_workers": {"train": 0, "val": 0, "test": 0},
        "batch_size": {"train": batch_size, "val": batch_size, "test": batch_size},
        "max_epochs": max_epochs,
    }


def crystal_dataset_from_cache(cache_path: str, transforms: list | None = None, properties: list[str] | None = None,
                               dataset_transforms: list | None = None):
    """MatterGen's ``CrystalDataset.from_cache_path`` for crygen's dataset cache, whose property
    files write a missing value as ``null`` (strict JSON, like every crygen output). MatterGen's
    own reader would keep ``null`` as an object it cannot embed; here it becomes the NaN that
    MatterGen's code takes for a missing value (the unconditional embedding)."""
    import dataclasses

    import numpy as np
    from mattergen.common.data.dataset import CrystalDataset, CrystalDatasetBuilder

    dataset = CrystalDatasetBuilder.from_cache_path(cache_path=cache_path, transforms=transforms,
                                                    properties=[]).build(CrystalDataset)
    values = {}
    for name in properties or []:
        raw = json.loads((Path(cache_path) / f"{name}.json").read_text())["values"]
        values[name] = np.array([np.nan if v is None else v for v in raw])
        if len(values[name]) != len(dataset.structure_id):
            raise ValueError(f"{cache_path}/{name}.json: {len(values[name])} values for {len(dataset.structure_id)} structures")
    dataset = dataclasses.replace(dataset, properties=values)
    for transform in dataset_transforms or []:
        dataset = transform(dataset)
    return dataset


def model_config(
    lightning_module: dict[str, Any],
    data_module: dict[str, Any],
    trainer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole MatterGen run config, as MatterGen writes it to ``config.yaml``."""
    return {
        "params": {},
        "checkpoint_path": None,
        "load_original": False,
        "auto_resume": False,
        "lightning_module": lightning_module,
        "trainer": trainer or {},
        "data_module": data_module,
    }


def diffusion_steps(config: Any) -> int:
    """The D3PM step count of a model config (MatterGen's sampler must use the same N)."""
    dm = config["lightning_module"]["diffusion_module"]
    try:
        return int(dm["corruption"]["discrete_corruptions"]["atomic_numbers"]["d3pm"]["schedule"]["num_steps"])
    except (KeyError, TypeError):
        return 1000


def sampling_overrides(config: Any) -> list[str]:
    return [f"sampler_partial.N={diffusion_steps(config)}"]


# --------------------------------------------------------------------------- model dirs


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """A MatterGen model dir: ``config.yaml`` plus ``checkpoints/last.ckpt`` (a torch
    checkpoint with a ``state_dict``). Anything else is a one-line error. A published model
    name (``mattergen_base``, ...) is resolved first (crygen.model_source); the dir's path
    is returned."""
    from crygen.model_source import resolve_model_dir

    model_dir = resolve_model_dir(model_dir)
    if not model_dir.is_dir():
        raise CrygenError(model_dir, "model directory not found")
    config = model_dir / "config.yaml"
    if not config.is_file():
        raise CrygenError(config, "missing: a MatterGen model dir needs config.yaml")
    ckpt = model_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise CrygenError(ckpt, "missing: a MatterGen model dir needs checkpoints/last.ckpt")
    read_checkpoint(ckpt)  # validates
    import yaml

    try:
        cfg = yaml.safe_load(config.read_text())
    except yaml.YAMLError as e:
        raise CrygenError(config, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or "lightning_module" not in cfg:
        raise CrygenError(config, "not a MatterGen config (no lightning_module section)")
    return model_dir


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    import pickle
    import zipfile

    import torch

    from crygen.model_source import is_lfs_pointer

    path = Path(path)
    if is_lfs_pointer(path):
        raise CrygenError(path, "a Git LFS pointer, not the checkpoint (the repository was cloned without "
                                "git-lfs: run `git lfs pull` there, or give the model's name to download it)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CrygenError(path, f"not a PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CrygenError(path, "not a Lightning checkpoint (no state_dict)")
    return ckpt


def load_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """A model dir's config as the pinned stack accepts it (crygen.config_adaptations)."""
    return read_model_config(model_dir)[0]


def read_model_config(model_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """A model dir's config, adapted, and the names of the adaptations it needed."""
    import yaml

    from crygen.config_adaptations import adapt_config

    config = yaml.safe_load((Path(model_dir) / "config.yaml").read_text())
    return config, adapt_config(config)


def checkpoint_info(model_dir: str | os.PathLike):
    from mattergen.common.utils.data_classes import MatterGenCheckpointInfo

    ensure_mattergen_files()
    return MatterGenCheckpointInfo(model_path=Path(model_dir).resolve(), load_epoch="last")


def load_lightning_module(model_dir: str | os.PathLike, device: str = "cpu"):
    """Load a model dir the way MatterGen's generator does (its own loader, strict keys)."""
    from mattergen.diffusion.lightning_module import DiffusionLightningModule
    from omegaconf import OmegaConf

    model_dir = check_model_dir(model_dir)
    ensure_mattergen_files()
    config = OmegaConf.create(load_model_config(model_dir))
    module, result = DiffusionLightningModule.load_from_checkpoint_and_config(
        str(model_dir / "checkpoints" / "last.ckpt"),
        config=config.lightning_module,
        map_location=device,
        strict=True,
    )
    return module.to(device).eval()


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


def read_model_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / CRYGEN_MODEL_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def with_data_module(config: dict[str, Any], data_module: dict[str, Any]) -> dict[str, Any]:
    """A copy of a model config that trains on another dataset."""
    config = deepcopy(config)
    config["data_module"] = data_module
    return config


# --------------------------------------------------------------------------- sampling


def num_atoms_distribution(num_atoms: Any) -> dict[int, float]:
    """Empirical distribution of atoms per cell, in MatterGen's NUM_ATOMS_DISTRIBUTIONS form."""
    import numpy as np

    counts = np.bincount(np.asarray(num_atoms, dtype=int))
    total = counts.sum()
    return {int(n): float(c / total) for n, c in enumerate(counts) if c > 0}


def register_num_atoms_distribution(name: str, distribution: dict[int | str, float]) -> str:
    """Make ``name`` usable as CrystalGenerator's ``num_atoms_distribution``."""
    from mattergen.common.data.num_atoms_distribution import NUM_ATOMS_DISTRIBUTIONS

    NUM_ATOMS_DISTRIBUTIONS[name] = {int(k): float(v) for k, v in distribution.items()}
    return name


# --------------------------------------------------------------------------- evaluation

# SMACT validity beyond this many oxidation-state combinations is not decided (False).
MAX_SMACT_COMBINATIONS = 200_000


def smact_validity(comp, count, use_pauling_test=True, include_alloys=True, include_cutoff=False,
                   use_element_symbol=False) -> bool:
    """MatterGen's ``smact_validity`` with the same answer, found sooner.

    MatterGen's version lists every charge-balanced combination of oxidation states before
    answering whether there is one; for a 15-element sample that is ~4^15 combinations and
    the evaluation never ends. This one stops at the first combination that passes, and
    gives up (False, counted as invalid) after MAX_SMACT_COMBINATIONS. An element SMACT has
    no oxidation states for makes the composition invalid (MatterGen's raises TypeError)."""
    import itertools

    import smact
    from mattergen.evaluation.metrics.structure import pauling_test
    from pymatgen.core import Element

    symbols = tuple(comp) if use_element_symbol else tuple(str(Element.from_Z(Z=z)) for z in comp)
    space = smact.element_dictionary(symbols)
    elements = list(space.values())
    if len(set(symbols)) == 1:
        return True
    if include_alloys and all(s in smact.metals for s in symbols):
        return True
    ox_combos = [e.oxidation_states for e in elements]
    if any(o is None for o in ox_combos):  # SMACT knows no charges (Pm...): MatterGen raises
        return False
    if include_cutoff and math.prod(len(o) for o in ox_combos) > 1e6:
        return True
    electronegs = [e.pauling_eneg for e in elements]
    stoichs = [(c,) for c in count]
    threshold = max(count)
    for i, ox_states in enumerate(itertools.product(*ox_combos)):
        if i >= MAX_SMACT_COMBINATIONS:
            return False
        balanced, ratios = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)
        if not balanced or not ratios:
            continue
        if use_pauling_test:
            try:
                if not pauling_test(ox_states, electronegs):
                    continue
            except TypeError:  # no electronegativity data: MatterGen assumes it passes
                pass
        return True
    return False


# --------------------------------------------------------------------------- properties
# MatterGen accepts a property only if its name is in the hard-coded PROPERTY_SOURCE_IDS
# list (datasets, PropertyValues and PropertyEmbedding assert it; the guidance transforms
# find conditional fields by it). crygen appends user property names to that same list
# object, which every MatterGen module imported by name. The model config names
# ``RegisteredPropertyEmbedding`` for such a property, so instantiating the config — in
# crygen or in MatterGen's own CrystalGenerator, in a fresh process — registers the name
# before MatterGen checks it; a model dir needs nothing but crygen importable.

# The property kinds crygen embeds (crygen/properties.py infers them from the data).
FLOAT, CATEGORICAL, CHEMICAL_SYSTEM, SPACE_GROUP = "float", "categorical", "chemical_system", "space_group"


_BUILTIN_PROPERTIES: tuple[str, ...] | None = None


def builtin_properties() -> tuple[str, ...]:
    """MatterGen's own property names (the list as it was before crygen added any)."""
    global _BUILTIN_PROPERTIES
    if _BUILTIN_PROPERTIES is None:
        from mattergen.common.utils.globals import PROPERTY_SOURCE_IDS

        _BUILTIN_PROPERTIES = tuple(PROPERTY_SOURCE_IDS)
    return _BUILTIN_PROPERTIES


def register_properties(names) -> None:
    from mattergen.common.utils.globals import PROPERTY_SOURCE_IDS

    builtin_properties()  # taken before the first addition
    for name in names:
        if name not in PROPERTY_SOURCE_IDS:
            PROPERTY_SOURCE_IDS.append(name)


def _property_embedding_class():
    from mattergen.property_embeddings import PropertyEmbedding

    class RegisteredPropertyEmbedding(PropertyEmbedding):
        def __init__(self, name: str, *args, **kwargs):
            register_properties([name])
            super().__init__(name, *args, **kwargs)

    return RegisteredPropertyEmbedding


def _categorical_embedding_class():
    import torch

    class CategoricalEmbedding(torch.nn.Module):
        """A learned vector per category. Takes category indices (the dataset stores them as
        floats, NaN where missing) or the category labels themselves (a condition given to
        MatterGen's generator, e.g. ``{"solid_electrolyte": "yes"}``)."""

        def __init__(self, categories: list[str], hidden_dim: int):
            super().__init__()
            self.categories = [str(c) for c in categories]
            self.hidden_dim = hidden_dim
            self.embedding = torch.nn.Embedding(len(self.categories), hidden_dim)

        def forward(self, x) -> torch.Tensor:
            device = self.embedding.weight.device
            if isinstance(x, torch.Tensor):
                # missing values (NaN) take index 0; PropertyEmbedding replaces their
                # embedding by the unconditional one
                index = torch.nan_to_num(x.reshape(-1).float(), nan=0.0).long().to(device)
            else:
                index = torch.tensor([self.categories.index(str(v)) for v in x], device=device)
            return self.embedding(index)

    return CategoricalEmbedding


def __getattr__(name: str):
    # The classes subclass torch modules; built on first use so importing this module
    # stays free of torch (the stages import it before choosing a device).
    if name == "RegisteredPropertyEmbedding":
        cls = _property_embedding_class()
    elif name == "CategoricalEmbedding":
        cls = _categorical_embedding_class()
    else:
        raise AttributeError(name)
    cls.__module__ = __name__
    cls.__qualname__ = name
    globals()[name] = cls
    return cls


def property_embedding_config(name: str, definition: dict[str, Any], hidden_dim: int) -> dict[str, Any]:
    """MatterGen's PropertyEmbedding for one property, as MatterGen's own Hydra conf builds
    it for its built-in ones: scalars through a StandardScaler (fitted on the training
    values) and a sinusoidal encoding, chemical systems multi-hot, space groups a table."""
    kind = definition["kind"]
    unconditional = {"_target_": "mattergen.property_embeddings.EmbeddingVector", "hidden_dim": hidden_dim}
    identity = {"_target_": "torch.nn.Identity"}
    if kind == FLOAT:
        conditional = {"_target_": "mattergen.diffusion.model_utils.NoiseLevelEncoding", "d_model": hidden_dim}
        scaler = {"_target_": "mattergen.common.utils.data_utils.StandardScalerTorch"}
    elif kind == CATEGORICAL:
        conditional = {"_target_": f"{__name__}.CategoricalEmbedding",
                       "categories": list(definition["categories"]), "hidden_dim": hidden_dim}
        scaler = identity
    elif kind == CHEMICAL_SYSTEM:
        conditional = {"_target_": "mattergen.property_embeddings.ChemicalSystemMultiHotEmbedding",
                       "hidden_dim": hidden_dim}
        scaler = identity
    elif kind == SPACE_GROUP:
        conditional = {"_target_": "mattergen.property_embeddings.SpaceGroupEmbeddingVector",
                       "hidden_dim": hidden_dim}
        scaler = identity
    else:
        raise ValueError(f"unknown property kind {kind!r}")
    target = ("mattergen.property_embeddings.PropertyEmbedding" if name in builtin_properties()
              else f"{__name__}.RegisteredPropertyEmbedding")
    return {"_target_": target, "name": name, "conditional_embedding_module": conditional,
            "unconditional_embedding_module": unconditional, "scaler": scaler}


def adapter_config(base_config: dict[str, Any], definitions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base model config with MatterGen's adapter denoiser (GemNetTAdapter + GemNetTCtrl)
    embedding ``definitions``, as MatterGen's finetune script composes it.

    A base that is already conditioned keeps its embeddings (and, through
    :func:`init_adapter_module`, their weights) and gains adapters for the properties it
    lacks; MatterGen's own finetune replaces the base's adapters instead, so a model it
    fine-tunes from ``space_group`` on another property no longer takes a space group
    (MatterGen issue #204). A property the base already embeds keeps the base's embedding."""
    config = deepcopy(base_config)
    model = config["lightning_module"]["diffusion_module"]["model"]
    adapt = dict(model.get("property_embeddings_adapt") or {})
    known = set(adapt) | set(model.get("property_embeddings") or {})
    hidden = int(model["hidden_dim"])
    adapt.update((name, property_embedding_config(name, d, hidden))
                 for name, d in sorted(definitions.items()) if name not in known)
    model["_target_"] = "mattergen.adapter.GemNetTAdapter"
    model["property_embeddings_adapt"] = adapt
    model["gemnet"]["_target_"] = "mattergen.common.gemnet.gemnet_ctrl.GemNetTCtrl"
    previous = list(model["gemnet"].get("condition_on_adapt") or [])
    model["gemnet"]["condition_on_adapt"] = previous + sorted(set(adapt) - set(previous))
    return config


def property_embedding_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every property embedding of a model config (trained with the model or by an adapter)."""
    model = config["lightning_module"]["diffusion_module"]["model"]
    return {**(model.get("property_embeddings") or {}), **(model.get("property_embeddings_adapt") or {})}


def model_properties(config: dict[str, Any]) -> list[str]:
    return sorted(property_embedding_configs(config))


# what a condition on a property may be, from its conditional embedding's class (MatterGen's
# published models carry no crygen definitions)
_KIND_OF_EMBEDDING = {
    "mattergen.property_embeddings.ChemicalSystemMultiHotEmbedding": CHEMICAL_SYSTEM,
    "mattergen.property_embeddings.SpaceGroupEmbeddingVector": SPACE_GROUP,
    "mattergen.diffusion.model_utils.NoiseLevelEncoding": FLOAT,
}


def model_property_definitions(model_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The properties a model dir is conditioned on, each with what a condition on it may be:
    crygen's definition where crygen fine-tuned it (a float's range, a category's labels),
    otherwise its kind read from the config's embedding (a float then takes any number)."""
    recorded = read_model_info(model_dir).get("properties", {})
    definitions = {}
    for name, embedding in property_embedding_configs(load_model_config(model_dir)).items():
        if name in recorded:
            definitions[name] = recorded[name]
            continue
        conditional = embedding.get("conditional_embedding_module") or {}
        target = str(conditional.get("_target_", ""))
        if target.endswith(".CategoricalEmbedding"):
            definitions[name] = {"kind": CATEGORICAL, "categories": list(conditional["categories"])}
        elif target in _KIND_OF_EMBEDDING:
            definitions[name] = {"kind": _KIND_OF_EMBEDDING[target]}
            if (embedding.get("scaler") or {}).get("log10_transform"):
                definitions[name]["positive"] = True  # it embeds log10 of the value
        else:
            definitions[name] = {"kind": "unsupported", "embedding": target}
    return definitions


def adapter_parameter_prefixes(names) -> tuple[str, ...]:
    """The parameter names of the adapters for ``names`` (GemNetTAdapter / GemNetTCtrl)."""
    model = "diffusion_module.model."
    return tuple(p for n in names for p in (f"{model}property_embeddings_adapt.{n}.",
                                            f"{model}gemnet.cond_adapt_layers.{n}.",
                                            f"{model}gemnet.cond_mixin_layers.{n}."))


def init_adapter_module(config: dict[str, Any], base_state: dict[str, Any], trainable: list[str] | None = None):
    """Instantiate the adapter model with the base weights (a conditioned base's adapters
    included). ``trainable``: train only the adapters of these properties, the rest frozen
    (MatterGen's ``full_finetuning=false``); None trains everything."""
    from hydra.utils import instantiate

    register_properties(model_properties(config))
    module = instantiate(config["lightning_module"])
    state = module.state_dict()
    state.update((k, base_state[k]) for k in state.keys() & base_state.keys())
    module.load_state_dict(state, strict=True)
    if trainable is not None:
        prefixes = adapter_parameter_prefixes(trainable)
        for name, param in module.named_parameters():
            param.requires_grad_(name.startswith(prefixes))
    return module


def fit_property_scalers(module, train_values: dict[str, Any]) -> None:
    """Standardise each scalar property with its training mean and std (NaN ignored), as
    MatterGen's SetPropertyScalers callback does."""
    import torch

    model = module.diffusion_module.model
    embeddings = {**model.property_embeddings, **model.property_embeddings_adapt}
    for name, values in train_values.items():
        embeddings[name].fit_scaler(torch.as_tensor(values, dtype=torch.float32))


# --------------------------------------------------------------------------- sampling speed
# Faster replacements for MatterGen functions that sampling calls every step: the radius graph
# gives the original's output bit for bit, the bilinear layer the same to float32 rounding.
# Installed by install_sampling_speedups() (crygen.generation calls it); each is tested against
# MatterGen's original on real sampler states in tests/test_mattergen_compat.py.

# slack on the periodic images a pair needs, so float rounding can never hide a neighbour
_IMAGE_SLACK = 1e-3
# bound on the (pair, image) candidates held at once: (Q, 3) float32 arrays of 24 MB
_CANDIDATES_PER_CHUNK = 1 << 21


def radius_graph_pbc_ocp_per_pair_images(pos, pbc, natoms, cell, radius, max_num_neighbors_threshold,
                                         max_cell_images_per_dim=None):
    """MatterGen's (OCP's) ``radius_graph_pbc`` with the same output, bit for bit, in less time.

    The original measures the distance from every atom pair to every periodic image in a grid
    of cells sized for the batch's most demanding structure (up to 11^3 = 1331 images), so one
    small or skewed cell makes every structure in the batch pay for it, and the cost per
    structure grows with the batch size. An image n of atom j lies within ``radius`` of atom
    i only if, along each lattice direction k, ``|f_j - f_i + n_k| <= radius / d_k``
    (f: fractional coordinates, d_k: spacing of the lattice planes), so here each pair gets
    only the few images in that box (with a little slack, and never beyond the original's
    grid): about a tenth of what even a per-structure grid needs. The candidates' distances
    are computed with the original's own arithmetic and offsets, in the original's order
    (pairs by rank, images in grid order), and finished by the original's own neighbour
    cap. Images outside the box can hold no neighbour, so the edges, their order and their
    distances are the original's."""
    import torch
    from mattergen.common.utils import ocp_graph_utils as ocp

    if max_cell_images_per_dim is None:
        import sys

        max_cell_images_per_dim = sys.maxsize
    device = pos.device
    batch_size = len(natoms)
    if pbc is None or not bool(torch.all(torch.as_tensor(pbc))):
        return _ORIGINALS["radius_graph_pbc_ocp"](pos, pbc, natoms, cell, radius, max_num_neighbors_threshold,
                                                  max_cell_images_per_dim)

    natoms_squared = (natoms**2).long()
    index_offset = torch.cumsum(natoms, dim=0) - natoms

    # required images per direction, as the original computes them
    cross_a2a3 = torch.cross(cell[:, 1], cell[:, 2], dim=-1)
    cell_vol = torch.sum(cell[:, 0] * cross_a2a3, dim=-1, keepdim=True)
    cross_a3a1 = torch.cross(cell[:, 2], cell[:, 0], dim=-1)
    cross_a1a2 = torch.cross(cell[:, 0], cell[:, 1], dim=-1)
    inv_min_dist = torch.stack([torch.norm(c / cell_vol, p=2, dim=-1) for c in (cross_a2a3, cross_a3a1, cross_a1a2)],
                               dim=1)  # (B, 3)
    rep = torch.ceil(radius * inv_min_dist)
    max_rep = [min(int(rep[:, k].max()), max_cell_images_per_dim) for k in range(3)]

    # the original's grid of cells and its offsets for every structure (same call, same values)
    cells_per_dim = [torch.arange(-r, r + 1, device=device, dtype=torch.float) for r in max_rep]
    grid = torch.cartesian_prod(*cells_per_dim)  # (C, 3), lexicographic
    num_cells = len(grid)
    data_cell = torch.transpose(cell, 1, 2)
    pbc_offsets = torch.bmm(data_cell, grid.t().view(1, 3, num_cells).expand(batch_size, -1, -1))  # (B, 3, C)
    offset_rows = pbc_offsets.transpose(1, 2).reshape(-1, 3)  # row b * C + cell rank

    # every atom pair in the original's order, and the box of images it can need
    n_pairs = int(natoms_squared.sum())
    struct_of_pair = torch.repeat_interleave(torch.arange(batch_size, device=device), natoms_squared)
    local = torch.arange(n_pairs, device=device) - torch.repeat_interleave(
        torch.cumsum(natoms_squared, 0) - natoms_squared, natoms_squared)
    n_expand = natoms[struct_of_pair]
    first_atom = index_offset[struct_of_pair]
    index1 = torch.div(local, n_expand, rounding_mode="floor") + first_atom
    index2 = (local % n_expand) + first_atom
    with torch.no_grad():
        batch_of_atom = torch.repeat_interleave(torch.arange(batch_size, device=device), natoms)
        frac = torch.linalg.solve(cell.double().transpose(1, 2)[batch_of_atom], pos.double().unsqueeze(-1))[..., 0]
        reach = (radius * inv_min_dist.double() * (1 + _IMAGE_SLACK) + _IMAGE_SLACK)[struct_of_pair]
        shift = frac[index2] - frac[index1]
        caps = torch.tensor(max_rep, dtype=torch.double, device=device)
        # a non-finite cell or position (a diverging sample) gets the original's whole grid
        low = torch.nan_to_num(torch.ceil(-reach - shift), nan=-torch.inf)
        high = torch.nan_to_num(torch.floor(reach - shift), nan=torch.inf)
        low = torch.maximum(low, -caps).long()
        high = torch.minimum(high, caps).long()
        width = (high - low + 1).clamp(min=0)  # (P, 3)
        images_of_pair = width.prod(dim=1)

    # per pair, what each of its candidates needs (one gather per candidate, not one per field):
    # the box's strides, the grid rank of its first image, both atoms and the structure's rows
    sides = [2 * r + 1 for r in max_rep]
    first_rank = ((low[:, 0] + max_rep[0]) * sides[1] + low[:, 1] + max_rep[1]) * sides[2] + low[:, 2] + max_rep[2]
    per_pair = torch.stack((width[:, 2], width[:, 1] * width[:, 2], first_rank, index1, index2,
                            struct_of_pair * num_cells), dim=1)
    # the pairs in chunks, so the (candidates, 3) arrays stay bounded on big batches
    chunk_end = torch.cumsum(images_of_pair, 0)
    parts, first = [], 0
    while first < n_pairs:
        limit = (chunk_end[first - 1] if first else 0) + _CANDIDATES_PER_CHUNK
        last = max(first + 1, int(torch.searchsorted(chunk_end, limit, right=True)))
        parts.append(_pair_image_candidates(pos, per_pair[first:last], images_of_pair[first:last], sides,
                                            offset_rows, radius))
        first = last
    index1, index2, cell_rank, atom_distance_squared = (torch.cat(x) for x in zip(*parts))
    cell_offsets = torch.index_select(grid, 0, cell_rank)

    # from here on, the original's own code
    mask_num_neighbors, num_neighbors_image = ocp.get_max_neighbors_mask(
        natoms=natoms, index=index1, atom_distance_squared=atom_distance_squared,
        max_num_neighbors_threshold=max_num_neighbors_threshold,
    )
    if not torch.all(mask_num_neighbors):
        index1 = torch.masked_select(index1, mask_num_neighbors)
        index2 = torch.masked_select(index2, mask_num_neighbors)
        atom_distance_squared = torch.masked_select(atom_distance_squared, mask_num_neighbors)
        cell_offsets = torch.masked_select(cell_offsets.view(-1, 3), mask_num_neighbors.view(-1, 1).expand(-1, 3))
        cell_offsets = cell_offsets.view(-1, 3)
    edge_index = torch.stack((index2, index1))
    cell_repeated = torch.repeat_interleave(cell, num_neighbors_image, dim=0)
    offsets = -cell_offsets.float().view(-1, 1, 3).bmm(cell_repeated.float()).view(-1, 3)
    return edge_index, cell_offsets, num_neighbors_image, offsets, torch.sqrt(atom_distance_squared)


def _pair_image_candidates(pos, per_pair, images_of_pair, sides, offset_rows, radius):
    """Each pair with every image in its box, lexicographically (the original's grid order),
    and those within ``radius``: index1, index2, the image's grid rank, squared distance.
    (index_select throughout: CPU advanced indexing is several times slower.)"""
    import torch

    device = pos.device
    pair = torch.repeat_interleave(torch.arange(len(per_pair), device=device), images_of_pair)
    rank = torch.arange(len(pair), device=device) - torch.index_select(
        torch.cumsum(images_of_pair, 0) - images_of_pair, 0, pair)
    stride2, stride1, first_rank, index1, index2, rows = torch.index_select(per_pair, 0, pair).unbind(1)
    n0 = torch.div(rank, stride1, rounding_mode="floor")
    rest = rank - n0 * stride1
    n1 = torch.div(rest, stride2, rounding_mode="floor")
    n2 = rest - n1 * stride2
    cell_rank = first_rank + n0 * (sides[1] * sides[2]) + n1 * sides[2] + n2
    pos1 = torch.index_select(pos, 0, index1)
    pos2 = torch.index_select(pos, 0, index2) + torch.index_select(offset_rows, 0, rows + cell_rank)
    d2 = torch.sum((pos1 - pos2) ** 2, dim=1)
    keep = torch.nonzero(torch.logical_and(torch.le(d2, radius * radius), torch.gt(d2, 0.0001))).view(-1)
    return (torch.index_select(index1, 0, keep), torch.index_select(index2, 0, keep),
            torch.index_select(cell_rank, 0, keep), torch.index_select(d2, 0, keep))


_ORIGINALS: dict[str, Any] = {}


def efficient_bilinear_in_one_product(self, basis, m, id_reduce, id_ragged_idx):
    """MatterGen's ``EfficientInteractionBilinear.forward`` with its last step, the bilinear form
    over (emb_size_interm, emb_size), done as one (nEdges, interm * emb) x (interm * emb, out)
    product instead of emb_size batched products over a permuted copy followed by a sum; a
    quarter of the sampler's time at batch 64 on CPU went there. The same function, summed in
    another order, so not bit for bit: on real sampler states it is within a few float32
    ulps of the exact (float64) result, as the original is (7e-7 against 2.6e-7 of the
    largest output), and the denoiser's scores move by 1e-5 of their magnitude."""
    import torch

    rbf_w1, sph = basis  # (nEdges, emb_size_interm, num_spherical), (nEdges, num_spherical, Kmax)
    n_edges = rbf_w1.shape[0]
    if n_edges == 0:
        return _ORIGINALS["EfficientInteractionBilinear.forward"](self, basis, m, id_reduce, id_ragged_idx)
    k_max = int(id_ragged_idx.max()) + 1 if len(id_ragged_idx) else 0
    m2 = m.new_zeros(n_edges, k_max, self.emb_size)  # zero-padded neighbours, as the original
    m2[id_reduce, id_ragged_idx] = m
    sum_k = torch.matmul(sph, m2)  # (nEdges, num_spherical, emb_size)
    rbf_w1_sum_k = torch.matmul(rbf_w1, sum_k)  # (nEdges, emb_size_interm, emb_size)
    weight = self.weight.permute(1, 0, 2).reshape(-1, self.units_out)  # (interm * emb, out)
    return rbf_w1_sum_k.reshape(n_edges, -1) @ weight


def _speedups():
    """(key in _ORIGINALS, owner, attribute, replacement) for every swap install_sampling_speedups makes."""
    from mattergen.common.gemnet.layers import efficient
    from mattergen.common.utils import data_utils

    return [
        ("radius_graph_pbc_ocp", data_utils, "radius_graph_pbc_ocp", radius_graph_pbc_ocp_per_pair_images),
        ("EfficientInteractionBilinear.forward", efficient.EfficientInteractionBilinear, "forward",
         efficient_bilinear_in_one_product),
    ]


def install_sampling_speedups() -> None:
    """Swap in the replacements above (idempotent; undone by uninstall_sampling_speedups)."""
    for key, owner, name, replacement in _speedups():
        _ORIGINALS.setdefault(key, getattr(owner, name))
        setattr(owner, name, replacement)


def uninstall_sampling_speedups() -> None:
    for key, owner, name, _ in _speedups():
        if key in _ORIGINALS:
            setattr(owner, name, _ORIGINALS[key])
