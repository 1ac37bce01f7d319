"""Set finished runs side by side: COMPARE_OUT/index.html and runs.csv, one table of their
settings (those that differ marked), validation changes with intervals, generation metrics,
stage times and versions, read from each run's summary.json."""

from __future__ import annotations

from pathlib import Path

import click

from crygen.cli import run_script, say, setting_option, stage


@click.command(help=__doc__)
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@setting_option("COMPARE_OUT", "--out", type=click.Path(path_type=Path, file_okay=False), show_default=True,
                help="Folder for index.html and runs.csv (replaced whole when complete).")
@stage("compare")
def main(runs: tuple[Path, ...], out: Path):
    from crygen.report.compare import write_comparison

    say(f"compare: {write_comparison(list(runs), out)} ({len(runs)} runs; runs.csv beside it)")


if __name__ == "__main__":
    run_script(main)
