"""The atoms-per-cell distribution a model samples from (MatterGen's NUM_ATOMS_DISTRIBUTIONS)."""

from __future__ import annotations

from typing import Any

def num_atoms_distribution(num_atoms: Any) -> dict[int, float]:
    """Empirical distribution of atoms per cell, in MatterGen's NUM_ATOMS_DISTRIBUTIONS form."""
    import numpy as np

    counts = np.bincount(np.asarray(num_atoms, dtype=int))
    total = counts.sum()
    return {int(n): float(c / total) for n, c in enumerate(counts) if c > 0}


def register_num_atoms_distribution(name: str, distribution: dict[int | str, float]) -> str:
    """Make ``name`` usable as CrystalGenerator's ``num_atoms_distribution`` (in this process)."""
    from crygen import patches

    patches.extend("model.num_atoms_distributions", name, {int(k): float(v) for k, v in distribution.items()})
    return name

