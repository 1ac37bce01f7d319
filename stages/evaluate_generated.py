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

The relaxation runs in parts of a fixed size, each written when done under
OUT/relaxation-parts/ (a rerun after an interruption relaxes only the missing ones);
--shards N spreads them over N processes of --threads threads each (0: the cores divided
among them; one GPU each where DEVICE=cuda sees several). The metrics are computed once,
on every structure, and equal those of one process.
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import run_script, say, setting_option, stage
from crygen.evaluation.folder import SettingsError
from crygen.evaluation.shards import PART_SIZE, Sharding
from crygen.fileio import CrygenError, atomic_path, one_line
from crygen.relaxation import FMAX_DEFAULT


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
@setting_option("RELAX_STEPS", "--max-steps", show_default=True)
@setting_option("DEVICE", "--device", show_default=True)
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output folder (default: RESULTS/evaluations/<settings>, beside a file RESULTS).")
@click.option("--failure-file", default=None, type=click.Path(path_type=Path),
              help="On failure write the reason here and exit 0 (the pipeline records it and goes on); "
                   "a settings error (a potential mismatch) still fails.")
@setting_option("SHARDS", "--shards", show_default=True, type=click.IntRange(1))
@setting_option("THREADS", "--threads", show_default=True, type=click.IntRange(0))
@click.option("--part-size", default=PART_SIZE, show_default=True, type=click.IntRange(1), hidden=True,
              help="Structures per relaxation part (they are relaxed, written and shared out part by part).")
@click.option("--share", default=None, hidden=True, help="k/n: relax this share's parts only, write no results.")
@stage("evaluate_generated")
def main(results, reference, training_data, relax, potential, allow_potential_mismatch, fmax, max_steps, device, out,
         failure_file, shards, threads, part_size, share):
    from crygen.cli import threads_per_process, use_threads

    sharding = Sharding(shards, use_threads(threads_per_process(threads, shards)), part_size)
    if share:
        return relax_share_and_say(results, out, potential, device, fmax, max_steps, sharding, share)
    sharding.command = shard_command(results, potential, fmax, max_steps, sharding)
    args = (results, reference, training_data, relax, potential, allow_potential_mismatch, fmax, max_steps, device, out,
            sharding)
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


def shard_command(results: Path, potential: str, fmax: float, max_steps: int, sharding: Sharding):
    """The command line of relaxation shard ``k`` (this stage with ``--share k/N``), given the
    evaluation's output folder and the shard's device."""
    from crygen.shards import stage_command

    def command(k: int, out: Path, device: str) -> list[str]:
        return stage_command(__file__, [
            "--results", str(results), "--out", str(out), "--potential", potential, "--fmax", repr(fmax),
            "--max-steps", str(max_steps), "--device", device, "--shards", str(sharding.shards),
            "--threads", str(sharding.threads), "--part-size", str(sharding.part_size),
            "--share", f"{k}/{sharding.shards}"])

    return command


def relax_share_and_say(results: Path, out: Path | None, potential: str, device: str, fmax: float, max_steps: int,
                        sharding: Sharding, share: str) -> None:
    """A relaxation shard's process (started by the stage itself with SHARDS > 1)."""
    from crygen.cli import pick_device
    from crygen.evaluation.shards import relax_share
    from crygen.settings import Bad
    from crygen.settings import share as parse_share

    try:
        k, n = parse_share(share)
    except Bad as e:
        raise CrygenError(None, f"--share {share!r}: {e}") from None
    if out is None:
        raise CrygenError(None, "--share needs --out (the evaluation's output folder)")
    relax_share(results, out, potential, pick_device(device), fmax, max_steps, sharding, (k, n))


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
    run_script(main)
