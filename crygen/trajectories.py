"""Sampling trajectories as arrays: what the sampler's kept frames hold, nothing rebuilt per frame.

A 64-crystal batch keeps 51 frames of each sample. Turned into pymatgen Structures (MatterGen's
``structures_from_trajectory``), then into dicts for a generation block and back, then into
ASE atoms for the extxyz, they cost seconds per block, more than a block's writing may
(benchmarks/bench_shards.py). Here a sample's frames stay the model's own numbers: atomic
numbers, cell lengths and angles (MatterGen's ``lattice_matrix_to_params_torch``) and
fractional coordinates, float32 as the sampler made them. They are packed into a block as
bytes, exactly, and become ASE atoms only when the trajectories file is written, through the
same pymatgen calls (so the same numbers) as MatterGen's structures then pymatgen's adaptor.
"""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Trajectory:
    """One sample's kept frames: ``numbers`` (frames, atoms), ``lengths`` and ``angles`` (frames, 3),
    ``frac_coords`` (frames, atoms, 3); atom types are diffused too, so numbers vary by frame."""

    numbers: np.ndarray
    lengths: np.ndarray
    angles: np.ndarray
    frac_coords: np.ndarray

    def __len__(self) -> int:
        return len(self.numbers)

    def record(self) -> dict[str, Any]:
        """As JSON, every value exact (:func:`pack`)."""
        return {name: pack(getattr(self, name)) for name in ("numbers", "lengths", "angles", "frac_coords")}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Trajectory":
        return cls(**{name: unpack(value) for name, value in record.items()})

    def atoms(self) -> list:
        """The frames as ASE atoms, as MatterGen's ``make_structure`` and pymatgen's
        ``AseAtomsAdaptor.get_atoms`` make them (the cell from lengths and angles by pymatgen)."""
        from ase import Atoms
        from pymatgen.core import Lattice

        frames = []
        for numbers, lengths, angles, frac in zip(self.numbers, self.lengths, self.angles, self.frac_coords):
            lattice = Lattice.from_parameters(*lengths, *angles)
            # per site, as pymatgen's PeriodicSite computes its Cartesian coordinates
            positions = [lattice.get_cartesian_coords(np.asarray(f, dtype=np.float64)) for f in frac]
            frames.append(Atoms(numbers=numbers, positions=positions, cell=lattice.matrix, pbc=True))
        return frames


def from_sampler_frames(frames: list, keep: list[int]) -> list[Trajectory]:
    """The trajectories of samples ``keep`` (indices in the batch) from the sampler's recorded
    batches ``frames`` (MatterGen ChemGraphs, one per kept step)."""
    import torch
    from mattergen.common.utils.data_utils import lattice_matrix_to_params_torch

    params = [lattice_matrix_to_params_torch(f.cell) for f in frames]
    lengths = torch.stack([p[0] for p in params]).cpu().numpy()  # (frames, batch, 3)
    angles = torch.stack([p[1] for p in params]).cpu().numpy()
    pos = torch.stack([f.pos for f in frames]).cpu().numpy()  # (frames, atoms in batch, 3)
    numbers = torch.stack([f.atomic_numbers for f in frames]).cpu().numpy()
    ends = np.cumsum(frames[0].num_atoms.cpu().numpy())
    starts = ends - frames[0].num_atoms.cpu().numpy()
    return [Trajectory(numbers[:, starts[i]:ends[i]].copy(), lengths[:, i].copy(), angles[:, i].copy(),
                       pos[:, starts[i]:ends[i]].copy()) for i in keep]


def pack(array: np.ndarray) -> dict[str, Any]:
    """An array as JSON: its dtype, shape and bytes (base64), so it reads back bit for bit."""
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def unpack(packed: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(packed["data"])
    return np.frombuffer(data, dtype=np.dtype(packed["dtype"])).reshape(packed["shape"]).copy()


def write_trajectories(trajectories: list[Trajectory], path: Path) -> None:
    """``generated_trajectories.zip``: ``gen_<i>.extxyz`` per written structure, its frames in order."""
    import ase.io

    from crygen.fileio import atomic_path

    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for i, trajectory in enumerate(trajectories):
                buf = io.StringIO()
                ase.io.write(buf, trajectory.atoms(), format="extxyz")
                zf.writestr(f"gen_{i}.extxyz", buf.getvalue())
