"""Submit a crygen make target to a machine profile through dpdispatcher; check and fetch it.

`make remote`, `make remote-status` and `make remote-fetch` call this in the light
submit-side environment (requirements-local.txt). Variables for the job are read by name
from the environment, where make puts every command-line variable; secrets come only from
the environment or a 0600 credentials file, never from arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # crygen without torch's venv

from crygen.fileio import CrygenError, one_line  # noqa: E402
from crygen.remote.jobs import Dispatcher  # noqa: E402


def _run(dispatcher: Dispatcher, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs, echo=click.echo)
    except CrygenError as e:
        click.echo(f"remote: error: {dispatcher.redact(str(e))}", err=True)
        sys.exit(1 if e.problem.startswith("remote job failed") else 2)
    except Exception as e:  # dpdispatcher's own errors, as one line with secrets masked
        click.echo(f"remote: error: {dispatcher.redact(one_line(e))}", err=True)
        sys.exit(1)


@click.group(help=__doc__)
def cli() -> None:
    pass


@cli.command()
@click.option("--machine", envvar="CRYGEN_MACHINE", required=True, help="Profile name in remote/profiles/, or a path to a profile .json.")
@click.option("--target", envvar="CRYGEN_TARGET", required=True, help="The make target the job runs (pipeline, eval-gen, ...).")
@click.option("--given", envvar="CRYGEN_GIVEN", default="", help="Names of the variables given on make's command line (values from the environment).")
@click.option("--image", envvar="CRYGEN_IMAGE", default="", help="Container image for profiles that run one (Bohrium).")
@click.option("--wait/--no-wait", default=False, help="Wait, then fetch the run folder.")
@click.option("--dry-run/--submit", default=False, help="Build and check the job description only.")
def submit(machine: str, target: str, given: str, image: str, wait: bool, dry_run: bool) -> None:
    """Stage, check and submit TARGET; print the job id."""
    given_vars = {name: os.environ.get(name, "") for name in given.split()}
    defaults = {name: os.environ.get(f"CRYGEN_DEFAULT_{name}", "") for name in ("DATA", "BASE_MODEL", "RESULTS")}
    dispatcher = Dispatcher.from_environment()
    job_dir = _run(dispatcher, dispatcher.submit, machine, target, given_vars, defaults, image=image or None,
                   dry_run=dry_run)
    click.echo(f"job id: {job_dir.name}")
    if wait and not dry_run:
        _run(dispatcher, dispatcher.fetch, job_dir.name, wait=True)
    elif not dry_run:
        click.echo(f"check: make remote-status JOB={job_dir.name}   collect: make remote-fetch JOB={job_dir.name}")


@cli.command()
@click.option("--job", envvar="CRYGEN_JOB", required=True)
def status(job: str) -> None:
    """Report a job's state (and retry a terminated one as its profile allows)."""
    dispatcher = Dispatcher.from_environment()
    _run(dispatcher, dispatcher.status, job)


@cli.command()
@click.option("--job", envvar="CRYGEN_JOB", required=True)
@click.option("--wait/--no-wait", default=False)
def fetch(job: str, wait: bool) -> None:
    """Download a finished job's run folder into remote/jobs/<job>/run."""
    dispatcher = Dispatcher.from_environment()
    _run(dispatcher, dispatcher.fetch, job, wait=wait)


if __name__ == "__main__":
    cli()
