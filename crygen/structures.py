"""Structure I/O and the checks a structure must pass before MatterGen sees it.

Inputs crygen reads: a CSV (``material_id``, ``cif``, optional ``split`` and property
columns), a folder of CIF files (or of ``train.csv``/``val.csv``), an extxyz file, or a
CIF zip. Every reader returns :class:`Entry` objects; a structure that cannot be parsed
becomes an entry with a rejection reason instead of an exception, so one bad CIF costs one
row in ``rejected.csv``, not the run.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from crygen.fileio import CrygenError, atomic_path

MAX_ATOMS_DEFAULT = 20  # atoms in the primitive cell; MatterGen's MP-20 / Alex-MP-20 limit
MIN_DISTANCE_DEFAULT = 0.5  # Angstrom; closer atoms are overlapping, not a crystal
SPLITS = ("train", "val")


@dataclass
class Entry:
    material_id: str
    structure: Any = None  # pymatgen Structure, None when it could not be parsed
    split: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why it was rejected, None when accepted


def generatable_elements() -> set[int]:
    """Atomic numbers MatterGen's denoiser can emit (it masks all others when sampling)."""
    from mattergen.common.utils.globals import SELECTED_ATOMIC_NUMBERS

    return set(SELECTED_ATOMIC_NUMBERS)


# --------------------------------------------------------------------------- readers


def read_entries(path: str | os.PathLike) -> list[Entry]:
    path = Path(path)
    if not path.exists():
        raise CrygenError(path, "input not found")
    if path.is_dir():
        csvs = [path / f"{s}.csv" for s in SPLITS]
        if all(c.is_file() for c in csvs):
            entries = []
            for split, csv in zip(SPLITS, csvs):
                for e in _read_csv(csv):
                    e.split = split
                    entries.append(e)
            return entries
        cifs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".cif")
        if not cifs:
            raise CrygenError(path, "folder holds no .cif files (nor train.csv + val.csv)")
        return [_parse_cif(p.read_text(errors="replace"), p.stem, source=p.name) for p in cifs]
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".extxyz", ".xyz"):
        return _read_extxyz(path)
    if suffix == ".zip":
        return _read_cif_zip(path)
    if suffix == ".cif":
        return [_parse_cif(path.read_text(errors="replace"), path.stem, source=path.name)]
    raise CrygenError(path, "unsupported input: expected a .csv, .extxyz, .cif, .zip or a folder of CIFs")


def _read_csv(path: Path) -> list[Entry]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CrygenError(path, "empty CSV") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CrygenError(path, f"not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = {"material_id", "cif"} - set(df.columns)
    if missing:
        raise CrygenError(path, f"missing column(s) {', '.join(sorted(missing))}")
    if len(df) == 0:
        raise CrygenError(path, "CSV has a header but no rows")
    prop_cols = [c for c in df.columns if c not in ("material_id", "cif", "split")]
    entries = []
    # as dicts keyed by the header itself: itertuples renames columns that are not Python
    # identifiers ('band gap', 'e-hull', '_note'), and the lookups below then fail
    for row in df.to_dict("records"):
        entry = _parse_cif(str(row["cif"]), str(row["material_id"]), source=f"row {row['material_id']}")
        entry.properties = {c: row[c] for c in prop_cols}
        if "split" in df.columns and isinstance(row["split"], str):
            entry.split = row["split"].strip().lower()
            if entry.split not in SPLITS and entry.reason is None:
                entry.reason = f"unknown split {row['split']!r} (expected train or val)"
        entries.append(entry)
    return entries


def _parse_cif(text: str, material_id: str, source: str) -> Entry:
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser(io.StringIO(text)).parse_structures(primitive=False, on_error="raise")
        if not structures:
            raise ValueError("no structure in CIF")
        return Entry(material_id=material_id, structure=structures[0])
    except Exception as e:  # pymatgen raises many types for malformed CIFs
        msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        return Entry(material_id=material_id, reason=f"malformed CIF ({msg})")


def _read_extxyz(path: Path) -> list[Entry]:
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = ase.io.read(path, ":")
    except Exception as e:
        raise CrygenError(path, f"not a readable extxyz file ({str(e).splitlines()[0][:120]})") from None
    if not frames:
        raise CrygenError(path, "no structures in file")
    entries = []
    for i, atoms in enumerate(frames):
        info = dict(atoms.info)
        mid = str(info.pop("material_id", None) or info.pop("alexandria_id", None) or f"{path.stem}-{i}")
        if not atoms.pbc.all() or atoms.cell.rank < 3:
            entries.append(Entry(material_id=mid, reason="not a periodic 3D cell"))
            continue
        split = info.pop("split", None)
        props = {k: v for k, v in info.items() if isinstance(v, (int, float, str, np.number)) and not isinstance(v, bool)}
        entries.append(
            Entry(
                material_id=mid,
                structure=AseAtomsAdaptor.get_structure(atoms),
                split=split,
                properties=props,
            )
        )
    return entries


def _read_cif_zip(path: Path) -> list[Entry]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(".cif"))
            if not names:
                raise CrygenError(path, "zip holds no .cif files")
            return [_parse_cif(zf.read(n).decode(errors="replace"), Path(n).stem, source=n) for n in names]
    except zipfile.BadZipFile:
        raise CrygenError(path, "not a zip file") from None


def read_structures(path: str | os.PathLike) -> list[Any]:
    """Structures of a generation result: extxyz, CIF zip, folder of CIFs or a results folder."""
    path = Path(path)
    if path.is_dir() and (path / "generated_crystals.extxyz").is_file():
        path = path / "generated_crystals.extxyz"
    entries = read_entries(path)
    bad = [e for e in entries if e.structure is None]
    if bad:
        raise CrygenError(path, f"{len(bad)} structure(s) unreadable, first: {bad[0].material_id}: {bad[0].reason}")
    return [e.structure for e in entries]


# --------------------------------------------------------------------------- checks


def check_entry(entry: Entry, max_atoms: int, min_distance: float, allowed: set[int]) -> Entry:
    """Set ``entry.reason`` when the structure is unfit for MatterGen; keep the primitive cell."""
    if entry.reason is not None:
        return entry
    s = entry.structure
    if not s.is_ordered:
        entry.reason = "disordered (partial occupancies)"
        return entry
    bad = sorted({sp.symbol for sp in s.species if sp.Z not in allowed})
    if bad:
        entry.reason = f"unsupported element(s) {','.join(bad)} (MatterGen cannot generate them)"
        return entry
    if not math.isfinite(s.volume) or s.volume <= 1e-3:
        entry.reason = "degenerate cell (zero volume)"
        return entry
    prim = s.get_primitive_structure()
    if len(prim) > max_atoms:
        entry.reason = f"{len(prim)} atoms in the primitive cell (limit {max_atoms})"
        return entry
    if len(prim) > 1:
        dmat = prim.distance_matrix
        dmin = float(dmat[np.triu_indices(len(prim), 1)].min())
        if dmin < min_distance:
            entry.reason = f"overlapping atoms ({dmin:.2f} A apart, minimum {min_distance} A)"
            return entry
    entry.structure = prim
    return entry


def split_entries(entries: Sequence[Entry], val_fraction: float, seed: int) -> dict[str, list[Entry]]:
    """Use the input's own splits when every entry has one, else a seeded random split."""
    if entries and all(e.split in SPLITS for e in entries):
        return {s: [e for e in entries if e.split == s] for s in SPLITS}
    order = np.random.default_rng(seed).permutation(len(entries))
    n_val = max(1, int(round(val_fraction * len(entries)))) if len(entries) > 1 else 0
    val_idx = set(order[:n_val].tolist())
    return {
        "train": [e for i, e in enumerate(entries) if i not in val_idx],
        "val": [e for i, e in enumerate(entries) if i in val_idx],
    }


# --------------------------------------------------------------------------- writers


def write_dataset_cache(entries: Sequence[Entry], cache_dir: Path) -> None:
    """MatterGen's dataset cache layout (pos/cell/atomic_numbers/num_atoms/structure_id .npy)."""
    from mattergen.common.data.dataset import structures_to_numpy

    cache_dir.mkdir(parents=True, exist_ok=True)
    structs = []
    for e in entries:
        s = e.structure.copy()
        s.properties = {"material_id": e.material_id}
        structs.append(s)
    infos, _ = structures_to_numpy(structs)
    for key, arr in infos.items():
        np.save(cache_dir / f"{key}.npy", arr)


def write_structures(structures: Sequence[Any], extxyz: Path, cif_zip: Path) -> None:
    """The generated set as one extxyz file and a zip of CIFs, each renamed into place whole."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    with atomic_path(extxyz) as tmp:
        ase.io.write(tmp, [AseAtomsAdaptor.get_atoms(s) for s in structures], format="extxyz")
    with atomic_path(cif_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for i, s in enumerate(structures):
                zf.writestr(f"gen_{i}.cif", str(CifWriter(s)))


def iter_formulas(structures: Iterable[Any]) -> list[str]:
    return [s.composition.reduced_formula for s in structures]
