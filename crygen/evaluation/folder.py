"""``eval-gen``: evaluate a results folder (or file) and write the evaluation's output folder.

The inputs are resolved once (:func:`plan_evaluation`: the structures' source, the generation
beside them, the :class:`~crygen.reference.Reference`, the
:class:`~crygen.dataset.PreparedDataset` of the training set, and the settings that make the
evaluation, by content); an existing ``metrics_summary.json`` with the same settings is reused
(:func:`is_up_to_date`); otherwise the structures are read, relaxed when asked, evaluated
(:func:`crygen.evaluation.metrics.evaluate`) and written:

  metrics.json               MatterGen's metric names and values, as reported
  per_structure.csv          one row per structure, with what its hull stands on
  relaxed_structures.extxyz  the relaxed structures with their energies (when relaxing)
  metrics_summary.json       written last, with the settings that made it and each file's hash
  relaxation-parts/<key>/    the relaxation's finished parts (when relaxing; resumable, spread
                             over SHARDS processes: crygen.evaluation.shards)
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crygen.dataset import PreparedDataset
from crygen.evaluation.metrics import (STABILITY_THRESHOLD, STRICT_STABILITY_THRESHOLD, Evaluation, evaluate,
                                       reported)
from crygen.evaluation.records import (evaluation_settings, generation_info, sample_counts, settings_folder_name,
                                       structures_source, validity_over_samples)
from crygen.evaluation.shards import Sharding, open_work, relax_all
from crygen.fileio import CrygenError, atomic_path, sha256_file, write_json
from crygen.reference import Reference


class SettingsError(CrygenError):
    """The run's settings contradict each other: the pipeline stops instead of recording it."""


@dataclass
class EvaluationPlan:
    """An evaluation's inputs, resolved once."""

    results: Path
    source: Path  # the structures (see structures_source)
    generation: dict[str, Any]  # generation.json beside them, {} without one
    reference: Reference
    training_data: PreparedDataset | None
    settings: dict[str, Any]  # what the evaluation depends on, by content (evaluation_settings)
    potential_check: dict[str, Any] | None  # None without relaxation
    out: Path

    @property
    def summary_path(self) -> Path:
        return self.out / "metrics_summary.json"


@dataclass
class FolderEvaluation:
    """What :func:`evaluate_folder` did: reused an up-to-date evaluation, or wrote ``out``."""

    out: Path
    summary_path: Path
    up_to_date: bool
    count: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # as reported (withheld ones left out)
    withheld: dict[str, Any] | None = None
    potential_check: dict[str, Any] | None = None


def default_out(results: Path, folder_name: str) -> Path:
    """RESULTS/evaluations/<settings> for a folder, <file's folder>/evaluations/<file stem>-<settings>
    for a file: never the results folder itself, whose metrics_summary.json is the pipeline's."""
    if results.is_dir():
        return results / "evaluations" / folder_name
    return results.parent / "evaluations" / f"{results.stem}-{folder_name}"


def plan_evaluation(results: Path, reference_spec: str, training_data: Path | None, relax: bool,
                    potential_spec: str, allow_potential_mismatch: bool, fmax: float, max_steps: int,
                    out: Path | None) -> EvaluationPlan:
    """Check and resolve the inputs (one-line errors), and work out the settings and the output folder."""
    from crygen.relaxation import potential_identity

    if not results.exists():
        raise CrygenError(results, "not found")
    dataset = PreparedDataset.open(training_data) if training_data is not None else None
    source = structures_source(results)
    generation = generation_info(results)  # a corrupt generation.json is a one-line error
    reference = Reference.from_spec(reference_spec)
    settings = evaluation_settings(results, reference, dataset, relax,
                                   potential_identity(potential_spec) if relax else None, fmax, max_steps, generation)
    potential_check = None
    if relax:
        try:
            potential_check = reference.check_potential(settings["potential"], allow_potential_mismatch)
        except CrygenError as e:
            raise SettingsError(e.path, e.problem) from None
    out = Path(out) if out else default_out(results, settings_folder_name(settings, reference))
    return EvaluationPlan(results, source, generation, reference, dataset, settings, potential_check, out)


def is_up_to_date(summary_path: Path, settings: dict[str, Any]) -> bool:
    """Whether ``summary_path`` records an evaluation made with ``settings``."""
    if not summary_path.is_file():
        return False
    try:
        previous = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        previous = {}
    return previous.get("settings") == settings


def evaluate_folder(results: Path, reference_spec: str, training_data: Path | None, relax: bool, potential_spec: str,
                    allow_potential_mismatch: bool, fmax: float, max_steps: int, device: str,
                    out: Path | None, sharding: Sharding | None = None) -> FolderEvaluation:
    """Evaluate the structures of ``results`` (see the module's docstring); ``device``: for
    the potential (``auto`` picks one); ``sharding``: how the relaxation is spread
    (:mod:`crygen.evaluation.shards`; by default in this process, in parts)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    plan = plan_evaluation(results, reference_spec, training_data, relax, potential_spec, allow_potential_mismatch,
                           fmax, max_steps, out)
    if is_up_to_date(plan.summary_path, plan.settings):
        return FolderEvaluation(plan.out, plan.summary_path, up_to_date=True)
    structures, names = read_named(plan.source)
    samples = sample_counts(plan.generation, len(structures), results / "generation.json")
    if relax:
        _refuse_disordered(plan.source, structures, names)
    reference_info = plan.reference.info()
    training = plan.training_data.structures() if plan.training_data is not None else []
    reference = plan.reference.with_training_set(training)
    relaxed, parts = None, None
    if relax:
        relaxed, parts = _relaxed(plan, structures, potential_spec, device, sharding or Sharding())
    evaluated = [r.structure for r in relaxed] if relaxed else structures
    result = evaluate(evaluated, reference, energies=[r.energy for r in relaxed] if relaxed else None,
                      original_structures=structures if relaxed else None,
                      energy_correction=plan.settings["energy_correction"] or "MP2020")
    metrics, additional, withheld = reported(result)
    validity = validity_over_samples(result, samples)
    _name_rows(result, names, relaxed)
    files = _write_outputs(plan.out, result, relaxed, metrics)
    summary = _summary(plan, structures, result, metrics, additional, withheld, validity, reference_info, len(training))
    summary["outputs"] = {name: sha256_file(plan.out / name) for name in files}
    if parts is not None:
        summary["relaxation_parts"] = parts  # which process relaxed each part, where, how long
    write_json(plan.summary_path, summary)
    return FolderEvaluation(plan.out, plan.summary_path, False, len(structures), metrics, withheld,
                            plan.potential_check)


def read_named(source: Path) -> tuple[list, list[str]]:
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


def _refuse_disordered(source: Path, structures: list, names: list[str]) -> None:
    disordered = [name for name, s in zip(names, structures) if not s.is_ordered]
    if disordered:
        raise CrygenError(source / disordered[0] if source.is_dir() and disordered[0].endswith(".cif") else source,
                          f"{len(disordered)} of {len(structures)} structures disordered (partial occupancies; "
                          f"first: {disordered[0]}): relaxation needs ordered structures; RELAX=0 "
                          f"(--no-relax) evaluates them without stability")


def _relaxed(plan: EvaluationPlan, structures: list, potential_spec: str, device: str,
             sharding: Sharding) -> tuple[list, dict[str, Any]]:
    """Every structure relaxed with the potential, in parts (:mod:`crygen.evaluation.shards`),
    and the parts' provenance (an error when every relaxation failed)."""
    from dataclasses import replace

    from crygen.cli import pick_device

    device = pick_device(device)
    if not sharding.threads:
        import torch

        sharding = replace(sharding, threads=torch.get_num_threads())
    settings = plan.settings
    work = open_work(plan.out, settings["structures_sha256"], settings["potential"], settings["fmax"],
                     settings["max_steps"], sharding.part_size, sharding.threads, device, len(structures))
    return relax_all(structures, work, potential_spec, device, settings["fmax"], settings["max_steps"], sharding,
                     plan.source)


def _name_rows(result: Evaluation, names: list[str], relaxed: list | None) -> None:
    for row, name in zip(result.table, names):
        row["name"] = name
    if relaxed:
        for row, r in zip(result.table, relaxed):
            row.update(relax_steps=r.steps, relax_converged=r.converged, relax_error=r.error)


def _summary(plan: EvaluationPlan, structures: list, result: Evaluation, metrics: dict[str, Any],
             additional: dict[str, Any], withheld: dict[str, Any] | None, validity: dict[str, Any],
             reference_info: dict[str, Any], n_training: int) -> dict[str, Any]:
    """``metrics_summary.json``, its ``outputs`` (the hashes of the files written before it) to fill in."""
    from crygen.properties import condition_report

    settings = plan.settings
    return {
        "count": len(structures),
        "metrics": metrics,
        "metrics_over": f"the {len(structures)} structures given (MatterGen's denominators)",
        "relaxed": settings["relaxed"],
        "additional_metrics": additional,
        **({"withheld_metrics": withheld} if withheld else {}),
        "validity_over_drawn_samples": validity,
        "uncovered_chemical_systems": result.uncovered_systems,
        "definitions": _definitions(settings, reference_info, n_training),
        "reference": reference_info,
        "potential": settings["potential"],  # name and weights hash, None without relaxation
        "potential_check": plan.potential_check,  # None without relaxation
        "settings": settings,
        "outputs": None,
        # how well the generated structures met the generation condition, where computable
        **({"condition": condition_report(structures, settings["condition"])} if "condition" in settings else {}),
    }


def _definitions(settings: dict[str, Any], reference_info: dict[str, Any], n_training: int) -> dict[str, Any]:
    from crygen.relaxation import CORRECTION_DESCRIPTIONS

    return {
        "stability_threshold_eV_per_atom": STABILITY_THRESHOLD,
        "strict_stability_threshold_eV_per_atom": STRICT_STABILITY_THRESHOLD,
        "structure_validity": "no interatomic distance < 0.5 A and volume >= 0.1 A^3 (MatterGen)",
        "composition_validity": "SMACT charge balance + Pauling test, alloys valid (MatterGen)",
        "structure_matcher": "MatterGen DefaultDisorderedStructureMatcher: ltol 0.2, stol 0.3, "
                             "angle_tol 5 deg, primitive cell, volume scaled",
        "novelty_against": f"{reference_info['name']} ({reference_info['entries']} entries)"
                           + (f" + training set ({n_training} structures)" if n_training else ""),
        "energy_correction": CORRECTION_DESCRIPTIONS[settings["energy_correction"]] if settings["relaxed"] else None,
        "uncovered": "a structure with an element lacking an elemental reference energy has no hull: "
                     "its energy above hull is empty and the energy metrics exclude it",
        "hull_support": "reference entries with an energy in the structure's hull: compounds (>= 2 elements) "
                        "of its own chemical system, of its proper subsystems, and elemental entries; a "
                        "verdict on elements only compares the structure with its elements alone",
    }


def _write_outputs(out: Path, result: Evaluation, relaxed: list | None, metrics: dict[str, Any]) -> list[str]:
    """Every output but metrics_summary.json, which marks a complete evaluation: gone while the
    others are replaced, written last (by the caller), and with the hash of each of them."""
    summary_path = out / "metrics_summary.json"
    out.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)
    files = ["per_structure.csv", "metrics.json"]
    write_table(out / "per_structure.csv", result.table)
    if relaxed:
        write_relaxed(out / "relaxed_structures.extxyz", relaxed)
        files.append("relaxed_structures.extxyz")
    else:
        (out / "relaxed_structures.extxyz").unlink(missing_ok=True)  # an earlier relaxed evaluation's
    write_json(out / "metrics.json", metrics)
    return files


def write_table(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def write_relaxed(path: Path, relaxed: list) -> None:
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
