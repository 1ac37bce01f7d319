"""MatterGen run configs built by crygen, and what is read from them.

:func:`model_config` / :func:`data_module_config` and the builders they take build MatterGen
configs (the same ``_target_`` classes and keys as MatterGen's own ``config.yaml``), so the
model dirs crygen writes load in MatterGen's ``MatterGenCheckpointInfo`` / ``CrystalGenerator``.
:func:`sampling_overrides` sets the sampling config's step count to the model's D3PM step
count, which MatterGen's sampler requires.
"""

from __future__ import annotations

import json
import os
from copy import deepcopy
from pathlib import Path
from typing import Any

# Mean atomic number density (atoms / A^3) MatterGen uses as the lattice prior's limit.
AVERAGE_DENSITY = 0.05771451654022283



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



def with_data_module(config: dict[str, Any], data_module: dict[str, Any]) -> dict[str, Any]:
    """A copy of a model config that trains on another dataset."""
    config = deepcopy(config)
    config["data_module"] = data_module
    return config

