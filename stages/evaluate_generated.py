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

from pathlib import Path

import click

from crygen.cli import say, setting_option, stage
from crygen.evaluation.folder import SettingsError
from crygen.fileio import CrygenError, atomic_path, one_line
from crygen.relaxation import FMAX_DEFAULT, MAX_STEPS_DEFAULT


@click.command(help=__doc__)
@click.option("--results", required=True, type=click.Path(path_type=Path), help="Generated structures.")
@setting_option("REFERENCE", "--reference", show_default=True,
              help="'default' (crygen's CHGNet/MP2020 reference, `make reference`) or a MatterGen LMDB-gz file.")
@click.option("--training-data", default=None, type=click.Path(path_type=Path),
              help="Prepared dataset whose structures also count as known (novelty).")
@setting_option("RELAX", "--relax/--no-relax", show_default=True, help="Relax and compute stability.")
@setting_option("POTENTIAL", "--potential", show_default=True)
@click.option("--allow-potential-mismatch", is_flag=True,
              help="Place energies on a reference built with another potential (recorded in metrics_summary.json).")
@click.option("--fmax", default=FMAX_DEFAULT, show_default=True, help="Force convergence (eV/A).")
@click.option("--max-steps", default=MAX_STEPS_DEFAULT, show_default=True, help="Relaxation steps at most.")
@setting_option("DEVICE", "--device", show_default=True)
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
        return evaluate_and_say(*args)
    failure_file.unlink(missing_ok=True)
    try:
        evaluate_and_say(*args)
    except SettingsError:
        raise
    except Exception as e:  # recorded, not raised: summary.json carries {"error": ...}
        with atomic_path(failure_file) as tmp:
            tmp.write_text(f"{e if isinstance(e, CrygenError) else one_line(e)}\n")
        say(f"evaluate_generated: failed, recorded in {failure_file}: {e}")


def evaluate_and_say(*args) -> None:
    """:func:`crygen.evaluation.folder.evaluate_folder`, and a few lines on what it found."""
    from crygen.evaluation.folder import evaluate_folder

    done = evaluate_folder(*args)
    if done.up_to_date:
        say(f"evaluate_generated: {done.summary_path} is up to date (same structures and settings)")
        return
    metrics, withheld, potential_check = done.metrics, done.withheld, done.potential_check
    labels = {"avg_structure_validity": "valid", "frac_novel_unique_structures": "novel and unique",
              "frac_stable_structures": "stable", "frac_novel_unique_stable_structures": "S.U.N."}
    shown = ", ".join(f"{label} {metrics[k]:.2f}" for k, label in labels.items() if k in metrics)
    say(f"evaluate_generated: over {done.count} structures: {shown} -> {done.out}")
    if withheld:
        say(f"evaluate_generated: stability withheld: {withheld['reason']} (metrics_summary.json: withheld_metrics)")
    if potential_check and potential_check.get("problem"):
        say(f"evaluate_generated: potential mismatch allowed and recorded: {potential_check['problem']}")


if __name__ == "__main__":
    main()
