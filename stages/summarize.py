"""Collect a pipeline run into summary.json, with provenance.

Keys: checkpoint, metrics {baseline, finetuned, delta, delta_ci95}, conditioning (a
property-conditioned run: properties, condition, guidance, conditional vs unconditional
validation loss), generation_dir,
generation_eval {count, metrics, relaxed, additional_metrics, withheld_metrics,
validity_over_drawn_samples, potential_check, settings, ...} or {error} (a generation evaluation
whose recorded settings are not this run's is refused), and provenance (crygen, mattergen and
torch versions, git commit, settings and seeds, device, wall time of each stage).
"""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import run_script, say, stage
from crygen.fileio import CrygenError, read_json, write_json
from crygen.layout import RunFolder


@click.command(help=__doc__)
@click.option("--run-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--settings", "settings_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="JSON file of the run's settings (the Makefile's, normalised by crygen/settings.py).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Default: RUN_DIR/summary.json.")
@stage("summarize")
def main(run_dir: Path, settings_file: Path, out: Path | None):
    from crygen.provenance import summarize_run

    settings_obj = read_json(settings_file)
    if not isinstance(settings_obj, dict):
        raise CrygenError(settings_file, "expected a JSON object of settings")
    out = out or RunFolder(run_dir).part("summary")
    write_json(out, summarize_run(run_dir, settings_obj))
    say(f"summarize: {out}")


if __name__ == "__main__":
    run_script(main)
