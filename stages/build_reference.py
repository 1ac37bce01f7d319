"""Build crygen's default reference set (novelty and energy above hull) in MatterGen's format.

Relaxes real compounds (Materials Project insulators from crystal-toolkit, the demo's Alexandria
crystals, matcalc's elemental polymorphs; see crygen/reference_build.py) with POTENTIAL as
generated crystals are relaxed, corrects them as generated crystals are corrected, and writes
OUT (LMDB-gz, MatterGen's LMDBGZSerializer) with its recipe beside it (``<name>.json``: sources,
licences and hashes, potential, correction, relaxation, the hull's quality against DFT).

Resumable: results are kept in --work in parts as they finish, so a build that stops picks up
where it stopped. --part k/n relaxes every n-th structure from the k-th only (one of n runs or
machines); OUT is written by the run that finds every structure done (put the work folders'
part files together, then run once more without --part).
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import pick_device, run_script, say, setting_option, stage
from crygen.fileio import CrygenError
from crygen.settings import Bad, share


def parse_part(value: str) -> tuple[int, int]:
    try:
        return share(value)
    except Bad as e:
        raise CrygenError(None, f"--part {value!r}: {e}") from None


@click.command(help=__doc__)
@click.option("--demo-data", required=True, type=click.Path(path_type=Path), help="Crystals to include (extxyz, CIFs...).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Reference file to write (.gz).")
@click.option("--work", required=True, type=click.Path(path_type=Path),
              help="Folder for finished parts and downloaded sources (keep it to resume).")
@setting_option("PART", "--part", typed=False, show_default=True, help="k/n: relax only the k-th of n shares.")
@setting_option("POTENTIAL", "--potential", show_default=True)
@setting_option("DEVICE", "--device", show_default=True)
@click.option("--all-elements/--needed-elements", default=True, show_default=True,
              help="Elemental references for every element, or only for those in --demo-data.")
@click.option("--compounds/--no-compounds", default=True, show_default=True,
              help="Include the Materials Project compounds (and measure the hull's quality), or not (small tests).")
@stage("build_reference")
def main(demo_data: Path, out: Path, work: Path, part: str, potential: str, device: str, all_elements: bool,
         compounds: bool):
    from crygen.reference_build import build_reference

    share = parse_part(part)
    if not str(out).endswith(".gz"):
        raise CrygenError(out, "the reference file name must end in .gz (MatterGen's LMDB-gz format)")
    if not demo_data.is_file():
        raise CrygenError(demo_data, "demo data not found")
    result = build_reference(demo_data, out, work, potential, pick_device(device), all_elements, compounds, share)
    if not result.complete:
        say(f"build_reference: part {part}: relaxed {result.relaxed_now}; {result.missing} structures of other parts "
            f"still to relax before {out} can be written (results kept in {work})")
        return
    recipe = result.recipe
    quality = recipe["hull_quality"]
    said = f"; hull vs DFT on {quality['compounds']} compounds: MAE {quality['energy_above_hull_mae_eV_per_atom']} " \
           f"eV/atom, F1 {quality['f1']}" if quality else ""
    say(f"build_reference: {recipe['entries']} entries ({recipe['compounds']} compounds, {len(recipe['excluded'])} "
        f"left out, {result.relaxed_now} relaxed now){said} -> {out}")


if __name__ == "__main__":
    run_script(main)
