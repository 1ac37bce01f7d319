"""Write a run's report: RUN_DIR/report/index.html, one self-contained page (figures inline, CIFs
beside it) from the run's files alone; no model is loaded and no metric recomputed."""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import run_script, say, stage


@click.command(help=__doc__)
@click.option("--run-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Report folder (replaced whole when complete). Default: RUN_DIR/report.")
@stage("report")
def main(run_dir: Path, out: Path | None):
    from crygen.report import write_report

    say(f"report: {write_report(run_dir, out)}")


if __name__ == "__main__":
    run_script(main)
