"""Evaluate generated crystals: validity, uniqueness, novelty, stability and S.U.N. rate.

Input (--results): a results folder holding generated_crystals.extxyz, an extxyz file, a CIF
zip or a folder of CIF files (MatterGen's outputs or any other generator's). With --relax (the
default) every structure is relaxed with --potential and its energy (corrected as the potential
needs: MP2020 for MatterSim, none for CHGNet, whose training energies carry it) placed
against the convex hull of --reference (whose recorded potential must be --potential unless
--allow-potential-mismatch). Writes to --out, by default a folder named by the settings beside
the structures (RESULTS/evaluations/<relaxed-POTENTIAL-hash|unrelaxed>_<reference>-<hash>/):

\b
  metrics.json             MatterGen's metric names and values, as reported (see below)
  per_structure.csv        one row per structure, with what its hull stands on
  relaxed_structures.extxyz  the relaxed structures with their energies (when relaxing)
  metrics_summary.json     written last: count, metrics, crygen's additional metrics, hull
                           support, validity over all drawn samples, withheld metrics, the
                           potential check, definitions, the settings that made it (content
                           hashes) and the hash of each file above

When most stability verdicts rest on a hull of elements only, the stability metrics are
withheld from metrics.json and metrics_summary.json's metrics (moved under withheld_metrics,
with the reason). An existing metrics_summary.json is reused only when it was computed from
the same structures, reference, training set and settings.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import click

from crygen.cli import pick_device, say, stage
from crygen.fileio import CrygenError, atomic_path, one_line, sha256_file, write_json
from crygen.relaxation import FMAX_DEFAULT, MAX_STEPS_DEFAULT


@click.command(help=__doc__)
@click.option("--results", required=True, type=click.Path(path_type=Path), help="Generated structures.")
@click.option("--reference", default="default", show_default=True,
              help="'default' (crygen's CHGNet/MP2020 reference, `make reference`) or a MatterGen LMDB-gz file.")
@click.option("--training-data", default=None, type=click.Path(path_type=Path),
              help="Prepared dataset whose structures also count as known (novelty).")
@click.option("--relax/--no-relax", default=True, show_default=True, help="Relax and compute stability.")
@click.option("--potential", default="chgnet", show_default=True, help="chgnet, mattersim or a MatterSim .pth.")
@click.option("--allow-potential-mismatch", is_flag=True,
              help="Place energies on a reference built with another potential (recorded in metrics_summary.json).")
@click.option("--fmax", default=FMAX_DEFAULT, show_default=True, help="Force convergence (eV/A).")
@click.option("--max-steps", default=MAX_STEPS_DEFAULT, show_default=True, help="Relaxation steps at most.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output folder (default: RESULTS/evaluations/<settings>, beside a file RESULTS).")
@click.option("--failure-file", default=None, type=click.Path(path_type=Path),
              help="On failure write the reason here and exit 0 (the pipeline records it and goes on); "
                   "a settings error (a potential mismatch) still fails.")
@stage("evaluate_generated")
def main(results, reference, training_data, relax, potential, allow_potential_mismatch, fmax, max_steps, device, out,
         failure_file):
    args = (results, reference, training_data, relax, potential, allow_potential_mismatch, fmax, max_steps, device, out)
    if failure_file is None:
        return evaluate_folder(*args)
    failure_file.unlink(missing_ok=True)
    try:
        evaluate_folder(*args)
    except SettingsError:
        raise
    except Exception as e:  # recorded, not raised: summary.json carries {"error": ...}
        with atomic_path(failure_file) as tmp:
            tmp.write_text(f"{e if isinstance(e, CrygenError) else one_line(e)}\n")
        say(f"evaluate_generated: failed, recorded in {failure_file}: {e}")


class SettingsError(CrygenError):
    """The run's settings contradict each other: the pipeline stops instead of recording it."""


def default_out(results: Path, folder_name: str) -> Path:
    """RESULTS/evaluations/<settings> for a folder, <file's folder>/evaluations/<file stem>-<settings>
    for a file: never the results folder itself, whose metrics_summary.json is the pipeline's."""
    if results.is_dir():
        return results / "evaluations" / folder_name
    return results.parent / "evaluations" / f"{results.stem}-{folder_name}"


def evaluate_folder(results: Path, reference_spec: str, training_data: Path | None, relax: bool, potential_spec: str,
                    allow_potential_mismatch: bool, fmax: float, max_steps: int, device: str, out: Path | None) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from crygen.evaluation import (STABILITY_THRESHOLD, STRICT_STABILITY_THRESHOLD, evaluate, evaluation_settings,
                                   generation_info, reported, sample_counts, settings_folder_name,
                                   structures_source, training_structures, validity_over_samples)
    from crygen.properties import condition_report
    from crygen.reference import check_potential, load_reference, reference_file, with_training_set
    from crygen.relaxation import CORRECTION_DESCRIPTIONS, load_potential, potential_identity, relax as relax_structures

    if not results.exists():
        raise CrygenError(results, "not found")
    if training_data is not None and not (training_data / "train" / "pos.npy").is_file():
        raise CrygenError(training_data, "not a prepared dataset (no train/pos.npy)")
    source = structures_source(results)
    generation = generation_info(results)  # a corrupt generation.json is a one-line error
    reference_path = reference_file(reference_spec)
    settings = evaluation_settings(results, reference_path, training_data, relax,
                                   potential_identity(potential_spec) if relax else None, fmax, max_steps, generation)
    potential_check = None
    if relax:
        try:
            potential_check = check_potential(reference_path, settings["potential"], allow_potential_mismatch)
        except CrygenError as e:
            raise SettingsError(e.path, e.problem) from None
    out = Path(out) if out else default_out(results, settings_folder_name(settings, reference_path))
    summary_path = out / "metrics_summary.json"
    if summary_path.is_file():
        try:
            previous = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("settings") == settings:
            say(f"evaluate_generated: {summary_path} is up to date (same structures and settings)")
            return

    structures, names = _read(source)
    samples = sample_counts(generation, len(structures), results / "generation.json")
    disordered = [name for name, s in zip(names, structures) if not s.is_ordered]
    if relax and disordered:
        raise CrygenError(source / disordered[0] if source.is_dir() and disordered[0].endswith(".cif") else source,
                          f"{len(disordered)} of {len(structures)} structures disordered (partial occupancies; "
                          f"first: {disordered[0]}): relaxation needs ordered structures; RELAX=0 "
                          f"(--no-relax) evaluates them without stability")
    reference, reference_info = load_reference(reference_spec, settings["reference_sha256"])
    training = training_structures(training_data)
    novelty_reference = with_training_set(reference, training)

    energies = relaxed = None
    if relax:
        model = load_potential(potential_spec, pick_device(device))
        say(f"evaluate_generated: relaxing {len(structures)} structures with {model.name}")
        relaxed = relax_structures(structures, model, fmax=fmax, max_steps=max_steps, progress=True)
        if all(r.error for r in relaxed):
            raise CrygenError(source, f"every relaxation failed (first: {relaxed[0].error})")
        energies = [r.energy for r in relaxed]
    evaluated = [r.structure for r in relaxed] if relaxed else structures
    result = evaluate(evaluated, novelty_reference, energies=energies,
                      original_structures=structures if relaxed else None,
                      energy_correction=settings["energy_correction"] or "MP2020")
    metrics, additional, withheld = reported(result)
    validity = validity_over_samples(result, samples)

    for row, name in zip(result.table, names):
        row["name"] = name
    if relaxed:
        for row, r in zip(result.table, relaxed):
            row.update(relax_steps=r.steps, relax_converged=r.converged, relax_error=r.error)
    # metrics_summary.json marks a complete evaluation: gone while the others are replaced,
    # written last, and with the hash of each of them
    out.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)
    files = ["per_structure.csv", "metrics.json"]
    _write_table(out / "per_structure.csv", result.table)
    if relaxed:
        _write_relaxed(out / "relaxed_structures.extxyz", relaxed)
        files.append("relaxed_structures.extxyz")
    else:
        (out / "relaxed_structures.extxyz").unlink(missing_ok=True)  # an earlier relaxed evaluation's
    write_json(out / "metrics.json", metrics)
    write_json(summary_path, {
        "count": len(structures),
        "metrics": metrics,
        "metrics_over": f"the {len(structures)} structures given (MatterGen's denominators)",
        "relaxed": relax,
        "additional_metrics": additional,
        **({"withheld_metrics": withheld} if withheld else {}),
        "validity_over_drawn_samples": validity,
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
            "energy_correction": CORRECTION_DESCRIPTIONS[settings["energy_correction"]] if relax else None,
            "uncovered": "a structure with an element lacking an elemental reference energy has no hull: "
                         "its energy above hull is empty and the energy metrics exclude it",
            "hull_support": "reference entries with an energy in the structure's hull: compounds (>= 2 elements) "
                            "of its own chemical system, of its proper subsystems, and elemental entries; a "
                            "verdict on elements only compares the structure with its elements alone",
        },
        "reference": reference_info,
        "potential": settings["potential"],  # name and weights hash, None without relaxation
        "potential_check": potential_check,  # None without relaxation
        "settings": settings,
        "outputs": {name: sha256_file(out / name) for name in files},
        # how well the generated structures met the generation condition, where computable
        **({"condition": condition_report(structures, settings["condition"])} if "condition" in settings else {}),
    })
    labels = {"avg_structure_validity": "valid", "frac_novel_unique_structures": "novel and unique",
              "frac_stable_structures": "stable", "frac_novel_unique_stable_structures": "S.U.N."}
    shown = ", ".join(f"{label} {metrics[k]:.2f}" for k, label in labels.items() if k in metrics)
    say(f"evaluate_generated: over {len(structures)} structures: {shown} -> {out}")
    if withheld:
        say(f"evaluate_generated: stability withheld: {withheld['reason']} (metrics_summary.json: withheld_metrics)")
    if potential_check and potential_check.get("problem"):
        say(f"evaluate_generated: potential mismatch allowed and recorded: {potential_check['problem']}")


def _read(source: Path) -> tuple[list, list[str]]:
    """The structures of ``source`` and a name for each (its CIF file, or its id in the file)."""
    from crygen.structures import read_entries

    entries = read_entries(source)
    bad = [e for e in entries if e.structure is None]
    if bad:
        raise CrygenError(source, f"{len(bad)} structure(s) unreadable, first: {bad[0].material_id}: {bad[0].reason}")
    if not entries:
        raise CrygenError(source, "no structures to evaluate")
    cif_names = source.is_dir() and all((source / f"{e.material_id}.cif").is_file() for e in entries)
    return [e.structure for e in entries], [f"{e.material_id}.cif" if cif_names else e.material_id for e in entries]


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
