"""Evaluate generated crystals with MatterGen's own metrics (no relaxation yet).

Input: a results folder holding generated_crystals.extxyz, an extxyz file, a CIF zip or a
folder of CIF files. Writes metrics.json (MatterGen's metric names), metrics_summary.json
(count, metrics, relaxed, and the hash of what was evaluated) and per_structure.csv. An
existing metrics_summary.json computed from the same structures and settings is reused.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from crygen.cli import stage
from crygen.fileio import CrygenError, atomic_path, sha256_tree, write_json


@click.command(help=__doc__)
@click.option("--results", required=True, type=click.Path(path_type=Path), help="Generated structures.")
@click.option("--reference-data", default=None, type=click.Path(path_type=Path),
              help="Prepared dataset whose structures count as known (novelty).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder (default: the results folder).")
@click.option("--failure-file", default=None, type=click.Path(path_type=Path),
              help="On failure write the reason here and exit 0 (the pipeline records it and goes on).")
@stage("evaluate_generated")
def main(results: Path, reference_data: Path | None, out: Path | None, failure_file: Path | None):
    if failure_file is None:
        return evaluate(results, reference_data, out)
    failure_file.unlink(missing_ok=True)
    try:
        evaluate(results, reference_data, out)
    except Exception as e:  # recorded, not raised: summary.json carries {"error": ...}
        with atomic_path(failure_file) as tmp:
            tmp.write_text(f"{type(e).__name__}: {e}\n")
        click.echo(f"evaluate_generated: failed, recorded in {failure_file}: {e}", err=True)


def evaluate(results: Path, reference_data: Path | None, out: Path | None) -> None:
    from crygen.evaluation import structure_metrics, training_reference
    from crygen.structures import read_structures

    if not results.exists():
        raise CrygenError(results, "not found")
    source = results / "generated_crystals.extxyz" if (results / "generated_crystals.extxyz").is_file() else results
    out = Path(out) if out else (results if results.is_dir() else results.parent)
    settings = {
        "structures_sha256": sha256_tree(source),
        "reference_sha256": sha256_tree(reference_data) if reference_data else None,
        "relaxed": False,
    }
    summary_path = out / "metrics_summary.json"
    if summary_path.is_file():
        previous = json.loads(summary_path.read_text())
        if previous.get("settings") == settings:
            click.echo(f"evaluate_generated: {summary_path} is up to date (same structures and settings)")
            return
    if reference_data is not None and not (reference_data / "train" / "pos.npy").is_file():
        raise CrygenError(reference_data, "not a prepared dataset (no train/pos.npy)")

    structures = read_structures(source)
    if not structures:
        raise CrygenError(source, "no structures to evaluate")
    reference = training_reference(reference_data)
    metrics, per_structure = structure_metrics(structures, reference)

    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    columns = list(per_structure)
    writer.writerow(["index", "formula", "chemical_system", "num_atoms", *columns])
    for i, s in enumerate(structures):
        writer.writerow([i, s.composition.reduced_formula, s.composition.chemical_system, len(s),
                         *[per_structure[c][i] for c in columns]])
    with atomic_path(out / "per_structure.csv") as tmp:
        tmp.write_text(buf.getvalue())
    write_json(out / "metrics.json", metrics)
    write_json(summary_path, {
        "count": len(structures),
        "metrics": metrics,
        "relaxed": False,
        "reference": f"training set ({len(reference)} structures)" if reference_data else "none",
        "settings": settings,
    })
    shown = {k: metrics[k] for k in ("avg_structure_validity", "avg_comp_validity", "frac_unique_structures") if k in metrics}
    click.echo(f"evaluate_generated: {len(structures)} structures {shown} -> {out}")


if __name__ == "__main__":
    main()
