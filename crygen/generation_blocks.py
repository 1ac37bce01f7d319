"""Generation in blocks written as they finish, so a generation can be resumed and spread.

A block is one batch of :func:`crygen.generation.batch_sizes`' fixed plan: block ``b`` draws
its samples with the seeds of :func:`crygen.generation.batch_seed` (SEED, ``b``, retry) alone,
so what it holds never depends on which process drew it, in which order, or what was drawn
before. With the same SEED, block size, device type and thread count, the crystals are the
same whether the blocks ran in one process, in several, or after an interruption.

Each finished block is a part (:mod:`crygen.parts`) in ``<blocks dir>/<key>/``, the key naming
everything that changes what a block holds: the checkpoint's hash, the model's sampling
overrides, SEED, the block size, guidance and condition, whether trajectories are kept, the
device type and thread count. A block of another size (the last one, when NUM_GEN grows) is
another part, and is drawn again.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crygen.cli import device_kind
from crygen.fileio import sha256_file
from crygen.parts import PartStore, settings_key

BLOCK_FORMAT = 2  # 2: trajectories as packed arrays (crygen.trajectories), not pymatgen dicts


@dataclass(frozen=True)
class BlockStore:
    """The finished blocks of one generation's settings (:func:`open_blocks`)."""

    parts: PartStore
    key: str

    @staticmethod
    def name(block: int, size: int) -> str:
        return f"block-{block:06d}-of-{size}"

    def has(self, block: int, size: int) -> bool:
        return self.parts.has(self.name(block, size))

    def read(self, block: int, size: int) -> dict[str, Any]:
        return self.parts.read(self.name(block, size))

    def write(self, block: int, size: int, record: dict[str, Any]) -> Path:
        return self.parts.write(self.name(block, size), record)


def open_blocks(folder: Path, checkpoint: Path, overrides: list, seed: int, block_size: int, guidance: float,
                properties: dict[str, Any] | None, trajectories: bool, device: str, threads: int) -> BlockStore:
    key = settings_key("blocks", {
        "format": BLOCK_FORMAT, "checkpoint_sha256": sha256_file(checkpoint), "sampling_overrides": list(overrides),
        "seed": seed, "block_size": block_size, "guidance": guidance, "condition": properties or {},
        "trajectories": trajectories, "device": device_kind(device), "threads": threads,
    })
    return BlockStore(PartStore(Path(folder) / key, "generation block"), key)


def block_record(part: Any, block: int, size: int, seeds: list[int], device: str, threads: int) -> dict[str, Any]:
    """A finished block (a :class:`crygen.generation.GenerationResult` of that block alone) as JSON:
    structures as pymatgen dicts and trajectories as packed arrays (floats exact), every
    sample's fate, where and how it ran."""
    return {
        "format": BLOCK_FORMAT, "block": block, "size": size, "seeds": seeds,
        "structures": [s.as_dict() for s in part.structures],
        "trajectories": [t.record() for t in part.trajectories],
        "drawn": part.drawn, "batches_run": part.batches_run, "failed_sanity_check": part.failed_sanity_check,
        "failed_batches": part.failed_batches, "seconds": round(part.seconds, 3),
        "ran_on": {"host": platform.node(), "pid": os.getpid(), "device": device, "threads": threads},
    }


def add_block(result: Any, record: dict[str, Any]) -> None:
    """Block ``record`` (:func:`block_record`) added to ``result``, as if drawn into it."""
    from pymatgen.core import Structure

    from crygen.trajectories import Trajectory

    result.structures.extend(Structure.from_dict(d) for d in record["structures"])
    result.trajectories.extend(Trajectory.from_record(t) for t in record["trajectories"])
    result.drawn += record["drawn"]
    result.batches_run += record["batches_run"]
    result.failed_sanity_check += record["failed_sanity_check"]
    result.failed_batches.extend(record["failed_batches"])
    result.seconds += record["seconds"]
    result.blocks.append({"block": record["block"], "size": record["size"], "seeds": record["seeds"],
                          "written": len(record["structures"]),
                          "seconds": record["seconds"], **record["ran_on"]})
