"""Metrics of generated crystals, computed by MatterGen's own ``MetricsEvaluator``.

Without relaxation: structural validity (no atoms closer than 0.5 A, volume >= 0.1 A^3),
SMACT composition validity, uniqueness within the set, and novelty against a reference
built from the training data. The metric names and values are MatterGen's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

REFERENCE_METRIC_WORDS = ("novel", "precision", "recall")


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


def training_reference(data_dir: Path | None, name: str = "training set"):
    """A MatterGen ``ReferenceDataset`` of the training data (novelty is judged against it)."""
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    entries = []
    if data_dir is not None:
        for split in ("train", "val"):
            if (Path(data_dir) / split / "pos.npy").is_file():
                for s in structures_from_cache(Path(data_dir) / split):
                    entries.append(
                        ComputedStructureEntry(s, energy=0.0, data={"material_id": s.properties["material_id"]})
                    )
    return ReferenceDataset.from_entries(name, entries)


def structure_metrics(structures: Sequence[Any], reference) -> tuple[dict[str, float], dict[str, list]]:
    """MatterGen's structure metrics (aggregate) and the per-structure values behind them."""
    from mattergen.evaluation.metrics.evaluator import MetricsEvaluator

    from crygen.mattergen_compat import use_fast_smact_validity

    use_fast_smact_validity()
    evaluator = MetricsEvaluator.from_structures(list(structures), reference=reference)
    chosen = evaluator.available_metrics
    if len(reference) == 0:  # novelty, precision and recall are undefined without a reference
        chosen = [m for m in chosen if not any(w in m.name for w in REFERENCE_METRIC_WORDS)]
    computed = evaluator.compute_metrics(metrics=chosen)
    metrics = {k: _plain(v) for k, v in computed.items()}
    per_structure: dict[str, list] = {}
    for metric_cls in chosen:
        metric = evaluator._get_metric(metric_cls)
        pre = getattr(metric, "pre_aggregation_values", None)
        if pre is not None and len(pre) == len(structures):
            per_structure[metric.pre_aggregation_name] = [_plain(x) for x in pre]
    return metrics, per_structure


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
