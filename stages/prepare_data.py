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

from pathlib import Path

import click

from crygen.cli import run_script, say, setting_option, stage
from crygen.structures import MIN_DISTANCE_DEFAULT


@click.command(help=__doc__)
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="CSV, CIF folder or extxyz file.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@setting_option("VAL_FRACTION", "--val-fraction", show_default=True, type=click.FloatRange(0.0, 0.9))
@setting_option("SEED", "--seed", show_default=True, type=int)
@setting_option("MAX_ATOMS", "--max-atoms", show_default=True, type=click.IntRange(1, 500))
@click.option("--min-distance", default=MIN_DISTANCE_DEFAULT, show_default=True, type=float, help="Angstrom.")
@setting_option("PROPERTIES", "--properties", "property_names", help="Comma-separated property columns to keep.")
@stage("prepare_data")
def main(input_path: Path, out: Path, val_fraction: float, seed: int, max_atoms: int, min_distance: float,
         property_names: str) -> None:
    from crygen.dataset import prepare_dataset

    prepared = prepare_dataset(input_path, out, val_fraction, seed, max_atoms, min_distance, property_names)
    splits = prepared.splits
    say(f"prepare_data: {len(splits['train'])} train, {len(splits['val'])} val, {len(prepared.rejected)} rejected -> {out}")
    for name, d in prepared.definitions.items():
        if d.get("n_missing"):
            say(f"prepare_data: {name!r} has a value for {d['n_present']} of {len(prepared.accepted)} structures; "
                "the others are embedded unconditionally, as MatterGen does")


if __name__ == "__main__":
    run_script(main)
