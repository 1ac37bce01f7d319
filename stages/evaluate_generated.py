"""Evaluate generated crystals: validity, uniqueness, novelty, stability and S.U.N. rate.

Input (--results): a results folder holding generated_crystals.extxyz, an extxyz file, a CIF
zip or a folder of CIF files (MatterGen's outputs or any other generator's). With --relax (the
default) every structure is relaxed with --potential and its MP2020-corrected energy placed
against the convex hull of --reference. Writes to --out (default: the results folder):

\b
  metrics.json             MatterGen's metric names and values
  metrics_summary.json     count, metrics, relaxed, crygen's additional metrics, coverage,
                           the definitions used and the hash of inputs and settings
  per_structure.csv        one row per structure
  relaxed_structures.extxyz  the relaxed structures with their energies (when relaxing)

An existing metrics_summary.json is reused only when it was computed from the same structures,
reference, training set and settings.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import click

from crygen.cli import pick_device, stage
from crygen.fileio import CrygenError, atomic_path, one_line, sha256_file, sha256_tree, write_json
from crygen.relaxation import FMAX_DEFAULT, MAX_STEPS_DEFAULT


@click.command(help=__doc__)
@click.option("--results", required=True, type=click.Path(path_type=Path), help="Generated structures.")
@click.option("--reference", default="default", show_default=True,
              help="'default' (crygen's CHGNet/MP2020 reference, `make reference`) or a MatterGen LMDB-gz file.")
@click.option("--training-data", default=None, type=click.Path(path_type=Path),
              help="Prepared dataset whose structures also count as known (novelty).")
@click.option("--relax/--no-relax", default=True, show_default=True, help="Relax and compute stability.")
@click.option("--potential", default="chgnet", show_default=True, help="chgnet, mattersim or a MatterSim .pth.")
@click.option("--fmax", default=FMAX_DEFAULT, show_default=True, help="Force convergence (eV/A).")
@click.option("--max-steps", default=MAX_STEPS_DEFAULT, show_default=True, help="Relaxation steps at most.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder (default: the results folder).")
@click.option("--failure-file", default=None, type=click.Path(path_type=Path),
              help="On failure write the reason here and exit 0 (the pipeline records it and goes on).")
@stage("evaluate_generated")
def main(results, reference, training_data, relax, potential, fmax, max_steps, device, out, failure_file):
    args = (results, reference, training_data, relax, potential, fmax, max_steps, device, out)
    if failure_file is None:
        return evaluate_folder(*args)
    failure_file.unlink(missing_ok=True)
    try:
        evaluate_folder(*args)
    except Exception as e:  # recorded, not raised: summary.json carries {"error": ...}
        with atomic_path(failure_file) as tmp:
            tmp.write_text(f"{e if isinstance(e, CrygenError) else one_line(e)}\n")
        click.echo(f"evaluate_generated: failed, recorded in {failure_file}: {e}", err=True)


def evaluate_folder(results: Path, reference_spec: str, training_data: Path | None, relax: bool, potential_spec: str,
                    fmax: float, max_steps: int, device: str, out: Path | None) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from crygen.evaluation import STABILITY_THRESHOLD, STRICT_STABILITY_THRESHOLD, evaluate, training_structures
    from crygen.properties import condition_report
    from crygen.reference import load_reference, reference_file, with_training_set
    from crygen.relaxation import load_potential, potential_identity, relax as relax_structures
    from crygen.structures import read_structures

    if not results.exists():
        raise CrygenError(results, "not found")
    if training_data is not None and not (training_data / "train" / "pos.npy").is_file():
        raise CrygenError(training_data, "not a prepared dataset (no train/pos.npy)")
    source = results / "generated_crystals.extxyz" if (results / "generated_crystals.extxyz").is_file() else results
    generation_info = results / "generation.json"
    condition = json.loads(generation_info.read_text()).get("condition") if generation_info.is_file() else None
    out = Path(out) if out else (results if results.is_dir() else results.parent)
    settings = {
        "structures_sha256": sha256_tree(source),
        "reference_sha256": sha256_file(reference_file(reference_spec)),
        "training_data_sha256": sha256_tree(training_data) if training_data else None,
        "relaxed": relax,
        "potential": potential_identity(potential_spec) if relax else None,
        "fmax": fmax if relax else None,
        "max_steps": max_steps if relax else None,
    }
    if condition:
        settings["condition"] = condition
    summary_path = out / "metrics_summary.json"
    if summary_path.is_file():
        try:
            previous = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("settings") == settings:
            click.echo(f"evaluate_generated: {summary_path} is up to date (same structures and settings)")
            return

    structures = read_structures(source)
    if not structures:
        raise CrygenError(source, "no structures to evaluate")
    reference, reference_info = load_reference(reference_spec, settings["reference_sha256"])
    training = training_structures(training_data)
    novelty_reference = with_training_set(reference, training)

    energies = relaxed = None
    if relax:
        model = load_potential(potential_spec, pick_device(device))
        click.echo(f"evaluate_generated: relaxing {len(structures)} structures with {model.name}")
        relaxed = relax_structures(structures, model, fmax=fmax, max_steps=max_steps)
        if all(r.error for r in relaxed):
            raise CrygenError(source, f"every relaxation failed (first: {relaxed[0].error})")
        energies = [r.energy for r in relaxed]
    evaluated = [r.structure for r in relaxed] if relaxed else structures
    result = evaluate(evaluated, novelty_reference, energies=energies,
                      original_structures=structures if relaxed else None)

    if relaxed:
        for row, r in zip(result.table, relaxed):
            row.update(relax_steps=r.steps, relax_converged=r.converged, relax_error=r.error)
    out.mkdir(parents=True, exist_ok=True)
    _write_table(out / "per_structure.csv", result.table)
    if relaxed:
        _write_relaxed(out / "relaxed_structures.extxyz", relaxed)
    write_json(out / "metrics.json", result.metrics)
    write_json(summary_path, {
        "count": len(structures),
        "metrics": result.metrics,
        "relaxed": relax,
        "additional_metrics": result.additional,
        "uncovered_chemical_systems": result.uncovered_systems,
        "definitions": {
            "stability_threshold_eV_per_atom": STABILITY_THRESHOLD,
            "strict_stability_threshold_eV_per_atom": STRICT_STABILITY_THRESHOLD,
            "structure_validity": "no interatomic distance < 0.5 A and volume >= 0.1 A^3 (MatterGen)",
            "composition_validity": "SMACT charge balance + Pauling test, alloys valid (MatterGen)",
            "structure_matcher": "MatterGen DefaultDisorderedStructureMatcher: ltol 0.2, stol 0.3, "
                                 "angle_tol 5 deg, primitive cell, volume scaled",
            "novelty_against": f"{reference_info['name']} ({reference_info['entries']} entries)"
                               + (f" + training set ({len(training)} structures)" if training else ""),
            "energy_correction": "MaterialsProject2020Compatibility, as MatterGen applies it" if relax else None,
            "uncovered": "a structure with an element lacking an elemental reference energy has no hull: "
                         "its energy above hull is empty and the energy metrics exclude it",
        },
        "reference": reference_info,
        "potential": settings["potential"],  # name and weights hash, None without relaxation
        "settings": settings,
        # how well the generated structures met the generation condition, where computable
        **({"condition": condition_report(structures, condition)} if condition else {}),
    })
    shown = {k: result.metrics[k] for k in ("avg_structure_validity", "frac_novel_unique_structures",
                                            "frac_stable_structures", "frac_novel_unique_stable_structures")
             if k in result.metrics}
    click.echo(f"evaluate_generated: {len(structures)} structures {shown} -> {out}")


def _write_table(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _write_relaxed(path: Path, relaxed: list) -> None:
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for i, r in enumerate(relaxed):
        atoms = AseAtomsAdaptor.get_atoms(r.structure)
        atoms.calc = None  # the energy goes in info, once
        atoms.info.update(index=i, energy=r.energy, relax_steps=r.steps, relax_converged=r.converged)
        frames.append(atoms)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


if __name__ == "__main__":
    main()
