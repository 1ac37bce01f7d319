"""Turn the user's crystals into MatterGen's dataset cache (train/ and val/).

Input: a CSV (material_id, cif, optional split and property columns), a folder of CIF
files (or holding train.csv + val.csv), or an extxyz file. Each structure must parse, be
ordered, contain only elements MatterGen can generate, have at most --max-atoms atoms in its
primitive cell and no two atoms closer than --min-distance. Rejected entries are listed in
rejected.csv with the reason; an empty or all-rejected input is an error.

--properties keeps the named property columns (CSV columns, extxyz info keys, a folder's
properties.json or per-split <split>/<name>.json) as MatterGen's <split>/<name>.json, with
their definitions in properties.json (see crygen/properties.py).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from crygen.cli import say, stage
from crygen.fileio import CrygenError, atomic_path, dumps_json, sha256_tree, write_json
from crygen.structures import (
    MAX_ATOMS_DEFAULT,
    MIN_DISTANCE_DEFAULT,
    check_entry,
    generatable_elements,
    read_entries,
    split_entries,
    write_dataset_cache,
)


@click.command(help=__doc__)
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="CSV, CIF folder or extxyz file.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 0.9))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--max-atoms", default=MAX_ATOMS_DEFAULT, show_default=True, type=click.IntRange(1, 500))
@click.option("--min-distance", default=MIN_DISTANCE_DEFAULT, show_default=True, type=float, help="Angstrom.")
@click.option("--properties", "property_names", default="", help="Comma-separated property columns to keep.")
@stage("prepare_data")
def main(input_path: Path, out: Path, val_fraction: float, seed: int, max_atoms: int, min_distance: float,
         property_names: str) -> None:
    from crygen import properties as props

    entries = read_entries(input_path)
    if not entries:
        raise CrygenError(input_path, "no structures in input")
    names = props.parse_names(property_names)
    if names:
        props.attach_property_files(input_path, entries)
    allowed = generatable_elements()
    seen: set[str] = set()
    for e in entries:
        if e.material_id in seen and e.reason is None:
            e.reason = "duplicate material_id"
        seen.add(e.material_id)
        check_entry(e, max_atoms, min_distance, allowed)
    accepted = [e for e in entries if e.reason is None]
    rejected = [e for e in entries if e.reason is not None]
    if not accepted:
        first = rejected[0]
        raise CrygenError(input_path, f"all {len(entries)} structures rejected (first: {first.material_id}: {first.reason})")
    splits = split_entries(accepted, val_fraction, seed)
    if not splits["train"] or not splits["val"]:
        raise CrygenError(input_path, f"need at least one structure in train and val, got {len(splits['train'])}/{len(splits['val'])}")
    definitions = props.define_all(names, accepted, input_path)

    with atomic_path(out) as tmp:
        for name, split in splits.items():
            write_dataset_cache(split, tmp / name)
            props.write_split_values(split, definitions, tmp / name)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["material_id", "reason"])
        writer.writerows([e.material_id, e.reason] for e in rejected)
        (tmp / "rejected.csv").write_text(buf.getvalue())
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
        if names:
            summary["properties"] = names
            # structures with a value, per split: the others train and validate unconditionally
            summary["property_values"] = {split: props.values_present(entries_of, definitions)
                                          for split, entries_of in splits.items()}
            write_json(tmp / "properties.json", definitions)
        import json

        (tmp / "dataset.json").write_text(dumps_json(summary) + "\n")
    say(f"prepare_data: {len(splits['train'])} train, {len(splits['val'])} val, {len(rejected)} rejected -> {out}")
    for name, d in definitions.items():
        if d.get("n_missing"):
            say(f"prepare_data: {name!r} has a value for {d['n_present']} of {len(accepted)} structures; "
                "the others are embedded unconditionally, as MatterGen does")


if __name__ == "__main__":
    main()
