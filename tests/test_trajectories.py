"""crygen/trajectories.py: trajectories kept as the sampler's arrays write what MatterGen's
structures, through pymatgen's ASE adaptor, wrote; and read back from a block bit for bit."""

from __future__ import annotations

import io

import ase.io
import numpy as np

from crygen import patches
from crygen.generation import TRAJECTORY_FRAMES, _batch_conditions, _run_sampler, batch_seed, prepare_sampling
from crygen.mattergen import speedups
from crygen.mattergen.model_dir import ModelDir
from crygen.trajectories import Trajectory, from_sampler_frames, pack, unpack


def _extxyz(frames) -> str:
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    return buf.getvalue()


def test_array_trajectories_write_what_mattergens_structures_wrote(fast_base_model):
    from mattergen.generator import structures_from_trajectory
    from pymatgen.io.ase import AseAtomsAdaptor

    run = prepare_sampling(ModelDir(fast_base_model, verify=True), "cpu", 0.0)
    conditioning, mask = _batch_conditions(run, 5, batch_seed(3, 1, 0), None)
    with patches.applied(*speedups.SAMPLING):
        _, records = _run_sampler(run, conditioning, mask, record_trajectories=True)
    frames = records[:: max(1, len(records) // TRAJECTORY_FRAMES)]
    keep = [0, 2, 4]
    trajectories = from_sampler_frames(frames, keep)
    per_frame = [structures_from_trajectory([f]) for f in frames]  # MatterGen's own conversion
    for i, trajectory in zip(keep, trajectories):
        assert len(trajectory) == len(frames)
        theirs = [AseAtomsAdaptor.get_atoms(frame[i]) for frame in per_frame]
        assert _extxyz(trajectory.atoms()) == _extxyz(theirs)
        # the atom types change along the path (they are diffused too), and that is kept
        assert len({tuple(n) for n in trajectory.numbers}) > 1
        again = Trajectory.from_record(trajectory.record())
        for name in ("numbers", "lengths", "angles", "frac_coords"):
            a, b = getattr(trajectory, name), getattr(again, name)
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_packed_arrays_read_back_bit_for_bit():
    rng = np.random.default_rng(0)
    for array in (rng.normal(size=(4, 3, 3)).astype(np.float32), rng.integers(0, 100, size=(7, 2)),
                  np.array([np.nextafter(1.0, 2.0), -0.0, 1e-300])):
        back = unpack(pack(array))
        assert back.dtype == array.dtype and back.shape == array.shape
        assert back.tobytes() == array.tobytes()
