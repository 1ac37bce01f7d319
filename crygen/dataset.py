"""Prepared datasets: MatterGen's dataset cache (``train/`` and ``val/``) that ``prepare_data``
writes from the user's crystals, checked cheaply once and passed down as a :class:`PreparedDataset`.

A folder is a prepared dataset when its split holds ``pos.npy`` (with ``cell.npy``,
``atomic_numbers.npy``, ``num_atoms.npy`` and ``structure_id.npy`` beside it, as
:func:`crygen.structures.write_dataset_cache` writes them); :meth:`PreparedDataset.open` says
so in one line when it is not.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from crygen.fileio import CrygenError, atomic_path, dumps_json, read_json, sha256_tree, write_json
from crygen.structures import SPLITS, Entry


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset folder ``prepare_data`` wrote (``path``): its splits, structures and content hash."""

    path: Path

    @classmethod
    def open(cls, path: str | Path, split: str = "train", advice: str | None = None) -> "PreparedDataset":
        """The dataset at ``path``, or a :class:`CrygenError` when it has no ``split`` (e.g.
        ``not a prepared dataset (no train/pos.npy); run prepare_data first``)."""
        dataset = cls(Path(path))
        if not dataset.has(split):
            raise CrygenError(path, f"not a prepared dataset (no {split}/pos.npy)" + (f"; {advice}" if advice else ""))
        return dataset

    def has(self, split: str) -> bool:
        """Whether the split ``split`` is there (its ``pos.npy``)."""
        return (self.path / split / "pos.npy").is_file()

    def split(self, name: str) -> Path:
        return self.path / name

    @cached_property
    def record(self) -> dict[str, Any]:
        """What ``prepare_data`` recorded (``dataset.json``: input hash, split settings, counts), read once."""
        return read_json(self.path / "dataset.json")

    def structures(self) -> list[Any]:
        """Every structure of the dataset (train and val, those present): they count toward novelty."""
        out: list[Any] = []
        for split in SPLITS:
            if self.has(split):
                out += structures_from_cache(self.split(split))
        return out

    def sha256(self) -> str:
        """Content hash of the folder (every file in it)."""
        return sha256_tree(self.path)


def structures_from_cache(cache_dir: Path) -> list[Any]:
    """Structures stored in a MatterGen dataset cache split (see ``prepare_data``)."""
    from pymatgen.core import Lattice, Structure

    pos = np.load(cache_dir / "pos.npy")
    cell = np.load(cache_dir / "cell.npy")
    z = np.load(cache_dir / "atomic_numbers.npy")
    n = np.load(cache_dir / "num_atoms.npy")
    ids = np.load(cache_dir / "structure_id.npy", allow_pickle=True)
    out, start = [], 0
    for i, k in enumerate(n):
        s = Structure(Lattice(cell[i]), z[start : start + k].tolist(), pos[start : start + k])
        s.properties["material_id"] = str(ids[i])
        out.append(s)
        start += k
    return out


def training_structures(data_dir: Path | None) -> list[Any]:
    """Every structure of a prepared dataset (train and val): they count toward novelty."""
    return PreparedDataset(Path(data_dir)).structures() if data_dir is not None else []


# --------------------------------------------------------------------------- preparing


@dataclass
class Preparation:
    """What :func:`prepare_dataset` wrote: the dataset, its splits, the rejected entries (with
    their reasons) and the property definitions kept."""

    dataset: PreparedDataset
    splits: dict[str, list[Entry]]
    accepted: list[Entry]
    rejected: list[Entry]
    definitions: dict[str, Any]


def prepare_dataset(input_path: Path, out: Path, val_fraction: float, seed: int, max_atoms: int,
                    min_distance: float, property_names: str) -> Preparation:
    """Check the crystals of ``input_path``, split them and write MatterGen's dataset cache to
    ``out`` (all at once: a failure leaves an earlier ``out`` as it was), with ``rejected.csv``,
    ``dataset.json`` and, with ``property_names``, the property values and definitions."""
    from crygen import properties as props
    from crygen.structures import read_entries, split_entries

    entries = read_entries(input_path)
    if not entries:
        raise CrygenError(input_path, "no structures in input")
    names = props.parse_names(property_names)
    if names:
        props.attach_property_files(input_path, entries)
    accepted, rejected = _checked(entries, max_atoms, min_distance)
    if not accepted:
        first = rejected[0]
        raise CrygenError(input_path, f"all {len(entries)} structures rejected (first: {first.material_id}: {first.reason})")
    splits = split_entries(accepted, val_fraction, seed)
    if not splits["train"] or not splits["val"]:
        raise CrygenError(input_path, f"need at least one structure in train and val, got {len(splits['train'])}/{len(splits['val'])}")
    definitions = props.define_all(names, accepted, input_path)
    summary = {
        "input": str(input_path),
        "input_sha256": sha256_tree(input_path),
        "n_input": len(entries),
        "n_train": len(splits["train"]),
        "n_val": len(splits["val"]),
        "n_rejected": len(rejected),
        "val_fraction": val_fraction,
        "seed": seed,
        "max_atoms": max_atoms,
        "min_distance": min_distance,
    }
    _write(out, splits, rejected, definitions, names, summary)
    return Preparation(PreparedDataset(Path(out)), splits, accepted, rejected, definitions)


def _checked(entries: list[Entry], max_atoms: int, min_distance: float) -> tuple[list[Entry], list[Entry]]:
    """The entries accepted and rejected (a reason set on each rejected one; a repeated
    ``material_id`` is a duplicate)."""
    from crygen.structures import check_entry, generatable_elements

    allowed = generatable_elements()
    seen: set[str] = set()
    for e in entries:
        if e.material_id in seen and e.reason is None:
            e.reason = "duplicate material_id"
        seen.add(e.material_id)
        check_entry(e, max_atoms, min_distance, allowed)
    return [e for e in entries if e.reason is None], [e for e in entries if e.reason is not None]


def _write(out: Path, splits: dict[str, list[Entry]], rejected: list[Entry], definitions: dict[str, Any],
           names: list[str], summary: dict[str, Any]) -> None:
    from crygen import properties as props
    from crygen.structures import write_dataset_cache

    with atomic_path(out) as tmp:
        for name, split in splits.items():
            write_dataset_cache(split, tmp / name)
            props.write_split_values(split, definitions, tmp / name)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["material_id", "reason"])
        writer.writerows([e.material_id, e.reason] for e in rejected)
        (tmp / "rejected.csv").write_text(buf.getvalue())
        if names:
            summary["properties"] = names
            # structures with a value, per split: the others train and validate unconditionally
            summary["property_values"] = {split: props.values_present(entries_of, definitions)
                                          for split, entries_of in splits.items()}
            write_json(tmp / "properties.json", definitions)
        (tmp / "dataset.json").write_text(dumps_json(summary) + "\n")
