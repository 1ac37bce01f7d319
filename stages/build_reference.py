"""Build crygen's default reference set (novelty and energy above hull) in MatterGen's format.

Relaxes the embedded demo crystals and the lowest elemental polymorphs of matcalc's MP-PBE
element references with POTENTIAL, applies MP2020 corrections as MatterGen does to generated
crystals, and writes OUT (LMDB-gz, MatterGen's LMDBGZSerializer) with OUT's recipe beside it
(``<name>.json``: sources and their hashes, potential and its hash, relaxation settings, entries
left out). See crygen/reference.py.
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import pick_device, say, stage
from crygen.fileio import CrygenError


@click.command(help=__doc__)
@click.option("--demo-data", required=True, type=click.Path(path_type=Path), help="Crystals to include (extxyz, CIFs...).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Reference file to write (.gz).")
@click.option("--potential", default="chgnet", show_default=True, help="chgnet, mattersim or a MatterSim .pth.")
@click.option("--device", default="auto", show_default=True)
@click.option("--all-elements/--needed-elements", default=True, show_default=True,
              help="Elemental references for every element, or only for those in --demo-data.")
@stage("build_reference")
def main(demo_data: Path, out: Path, potential: str, device: str, all_elements: bool):
    from crygen.reference import build_reference

    if not str(out).endswith(".gz"):
        raise CrygenError(out, "the reference file name must end in .gz (MatterGen's LMDB-gz format)")
    if not demo_data.is_file():
        raise CrygenError(demo_data, "demo data not found")
    recipe = build_reference(demo_data, out, potential, pick_device(device), all_elements)
    say(f"build_reference: {recipe['entries']} entries ({len(recipe['excluded'])} left out) -> {out}")


if __name__ == "__main__":
    main()
