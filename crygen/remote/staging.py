"""What travels with a job: its variables, its inputs (uploaded, cached there, or already
there), the task folder with its manifest, and the job script that runs make."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from crygen.fileio import CrygenError, sha256_file, sha256_files, sha256_tree
from crygen.mattergen.published import PUBLISHED_MODELS
from crygen.remote import ERRLOG, OUTLOG, PROJECT, RUN_ARCHIVE, RUN_DIR, SCRIPT
from crygen.remote.credentials import NAME
from crygen.settings import SECRET_NAME, credentials_file, path_settings

# What of the project a job needs. The data it works on travel as inputs (below).
PROJECT_FILES = ("Makefile", "docker/docker.mk", "requirements-remote.txt", "requirements-local.txt",
                 "crygen", "stages", "tests", "benchmarks", "data/reference")
SKIPPED = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints")

# Variables that name an input file or folder (crygen/settings.py declares which). A local one
# travels (once per content, see ``input_cache``); ``remote:<path>`` or the profile's ``paths``
# name one already there.
PATH_VARS = path_settings()
# names, not paths, where no file or folder of that name is here: a published MatterGen model
# travels as its name and is found (or downloaded) on the remote side, as crygen.mattergen.published does
KEYWORDS = {"REFERENCE": {"default"}, "POTENTIAL": {"chgnet", "mattersim"}, "BASE_MODEL": set(PUBLISHED_MODELS),
            "MODEL": set(PUBLISHED_MODELS)}
REMOTE_PREFIX = "remote:"
# Set for the job by crygen: the run folder is the job's own, the environment the profile's.
JOB_OWNED_VARS = {"OUT", "EVAL_OUT", "VENV", "PYTHON", "PY", "ENV_READY", "SHELL"}
TARGET = re.compile(r"[a-z][a-z0-9-]*")


@dataclass
class Input:
    var: str
    value: str  # as given on the submitting side
    how: str  # "upload", "cached" (already in the input cache), "remote" (a path there)
    remote_value: str  # what the job's make gets
    sha256: str | None = None
    size: int | None = None
    files: dict[str, str] = field(default_factory=dict)  # sha256 by relative path, for the manifest


def job_variables(target: str, given: dict[str, str], defaults: dict[str, str]) -> dict[str, str]:
    """The variables a job passes on: every one given on the command line, plus the defaults
    of the inputs this target reads (DATA, BASE_MODEL; RESULTS for eval-gen)."""
    if not TARGET.fullmatch(target) or target.startswith("remote"):
        raise CrygenError(None, f"TARGET={target!r}: expected a crygen make target such as pipeline or eval-gen")
    variables = {}
    for name in ("DATA", "BASE_MODEL") + (("RESULTS",) if target == "eval-gen" else ()):
        if defaults.get(name):
            variables[name] = defaults[name]
    for name, value in given.items():
        if not NAME.fullmatch(name):
            raise CrygenError(None, f"{name!r}: not a make variable name")
        if SECRET_NAME.search(name):  # the Makefile refuses it first; a job never carries one
            raise CrygenError(None, f"{name}: a secret travels only from the environment or {credentials_file()}, "
                              "never as a job variable")
        if name not in JOB_OWNED_VARS:
            variables[name] = value
    return variables


def resolve_inputs(variables: dict[str, str], settings: dict, cached: Callable[[str], bool]) -> list[Input]:
    inputs = []
    remote_paths = settings.get("paths", {})
    for var in PATH_VARS:
        if var not in variables:
            continue
        value = variables[var]
        if var in remote_paths:
            inputs.append(Input(var, value, "remote", remote_paths[var]))
        elif value.startswith(REMOTE_PREFIX):
            inputs.append(Input(var, value, "remote", value[len(REMOTE_PREFIX):]))
        elif not (value in KEYWORDS.get(var, ()) and not Path(value).expanduser().exists()):
            inputs.append(_local_input(var, value, settings.get("input_cache"), cached))
    return inputs


def _local_input(var: str, value: str, cache: str | None, cached: Callable[[str], bool]) -> Input:
    """A file or folder here: already in the remote input cache, or uploaded."""
    path = Path(value).expanduser()
    if not path.exists():
        raise CrygenError(path, f"{var}: no such file or folder here (write {var}={REMOTE_PREFIX}<path> "
                          "for one on the remote side)")
    files = sha256_files(path)
    digest = sha256_tree(path, files)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    name = path.resolve().name
    if cache and cached(digest):
        return Input(var, value, "cached", f"{cache}/{digest}/{name}", digest, size)
    return Input(var, value, "upload", f"inputs/{digest[:16]}/{name}", digest, size, files)


def job_make_vars(target: str, variables: dict[str, str], inputs: list[Input], settings: dict) -> dict[str, str]:
    """What the job's make gets: the variables, the inputs where they lie there, the profile's
    make_vars and the job's own run folder."""
    make_vars = dict(variables)
    make_vars.update({i.var: i.remote_value for i in inputs})
    make_vars.update({str(k): str(v) for k, v in settings.get("make_vars", {}).items()})
    make_vars["OUT"] = RUN_DIR
    if target == "eval-gen":
        make_vars["EVAL_OUT"] = f"{RUN_DIR}/eval-gen"
    return make_vars


def _copy_tree(src: Path, dst: Path, link: bool) -> None:
    """Copy a file or folder (hard links for inputs, which the manifest then pins)."""
    def copy(s: str, d: str) -> None:
        if link:
            with contextlib.suppress(OSError):
                os.link(s, d)
                return
        shutil.copy2(s, d)

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns(*SKIPPED, "*.pyc"))
    else:
        copy(str(src), str(dst))


def stage_task(task: Path, inputs: list[Input]) -> None:
    """Fill ``task/`` with the project and the uploaded inputs."""
    for entry in PROJECT_FILES:
        if (PROJECT / entry).exists():
            _copy_tree(PROJECT / entry, task / entry, link=False)
    uploaded = set()
    for item in inputs:
        if item.how == "upload" and item.remote_value not in uploaded:
            _copy_tree(Path(item.value).expanduser(), task / item.remote_value, link=True)
            uploaded.add(item.remote_value)


def fill_task(task: Path, record: dict, inputs: list[Input], shares: Callable[[Path], None] | None = None,
              carried: str | None = None) -> None:
    """Fill a job's ``task/`` whole: the project and the inputs, then either one script running
    the record's target (``carried``: see :func:`job_script`) or, with ``shares``, what that
    writes (a folder and script per share); then the manifest. ``record`` gets the manifest and
    the files every task is sent (a share's own folder goes with its task only)."""
    stage_task(task, inputs)
    if shares is not None:
        shares(task)
    else:
        (task / SCRIPT).write_text(job_script(record["job_id"], record["target"], record["make_vars"], inputs,
                                              record.get("input_cache"), carried=carried))
    record["manifest"] = write_manifest(task, inputs)
    record["forward_files"] = sorted(p.name for p in task.iterdir() if not p.name.startswith("share-"))


def job_task(work_path: str, forward_files: list[str]):
    """dpdispatcher's Task for a job script in ``work_path``: it runs the script and brings back
    the packed run folder and make's logs."""
    from dpdispatcher import Task

    return Task(command=f"bash {SCRIPT}", task_work_path=work_path, forward_files=forward_files,
                backward_files=[RUN_ARCHIVE, OUTLOG, ERRLOG], outlog=OUTLOG, errlog=ERRLOG)


def write_manifest(task: Path, inputs: list[Input]) -> dict[str, str]:
    """sha256 of every file that travels, in sha256sum's format, which the job checks first.
    Uploaded inputs were hashed when resolved (their staged files are hard links to those)."""
    known = {(f"{i.remote_value}/{name}" if name else i.remote_value): digest
             for i in inputs if i.how == "upload" for name, digest in i.files.items()}
    files = {}
    for p in sorted(task.rglob("*")):
        if p.is_file():
            name = str(p.relative_to(task))
            files[name] = known.get(name) or sha256_file(p)
    (task / "MANIFEST.sha256").write_text("".join(f"{h}  {name}\n" for name, h in files.items()))
    return files


def make_quote(value: str) -> str:
    """A value make takes literally (it would expand ``$``), then quoted for the shell."""
    return shlex.quote(value.replace("$", "$$"))


def job_script(job_id: str, target: str, make_vars: dict[str, str], inputs: list[Input], cache: str | None,
               task_dir: str | None = None, carried: str | None = None) -> str:
    """The job's script; with ``task_dir`` (a task of a sharded job, run in that folder) make runs
    in the project copy above it and the task's run folder, ``task_dir/run``, is packed there.
    ``carried``: a folder under ``shares/`` copied into the run folder first (a merge task's
    blocks or parts; a forwarded folder may arrive as a link, and ``run/`` must be the job's own)."""
    lines = [
        "#!/usr/bin/env bash",
        f"# crygen job {job_id}: `make {target}` in this copy of the project, then its run folder packed.",
        "set -euo pipefail",
        *(["cd .."] if task_dir else []),
        "sha256sum --quiet --strict -c MANIFEST.sha256",
    ]
    uploads = {i.remote_value: i for i in inputs if i.how == "upload"}.values()
    if cache and uploads:
        lines.append(f"mkdir -p {shlex.quote(cache)}")
    for item in uploads:
        if cache:  # keep the input by content, so the next job with it uploads nothing
            slot = f"{cache}/{item.sha256}"
            lines.append(f"if [ ! -e {shlex.quote(slot + '/.complete')} ]; then tmp=$(mktemp -d {shlex.quote(slot)}.XXXXXX); "
                         f"cp -a {shlex.quote(item.remote_value)} \"$tmp/\" && touch \"$tmp/.complete\" && "
                         f"{{ mv -T \"$tmp\" {shlex.quote(slot)} 2>/dev/null || rm -rf \"$tmp\"; }}; fi")
    if carried:
        lines.append(f"mkdir -p {RUN_DIR}/{carried} && cp -RL shares/{carried}/. {RUN_DIR}/{carried}/")
    command = " ".join(["make", shlex.quote(target)] + [make_quote(f"{k}={v}") for k, v in make_vars.items()])
    lines += [f"status=0; {command} || status=$?",
              (f"if [ -d {task_dir}/{RUN_DIR} ]; then tar -czf {task_dir}/{RUN_ARCHIVE} -C {task_dir} {RUN_DIR}; fi"
               if task_dir else f"if [ -d {RUN_DIR} ]; then tar -czf {RUN_ARCHIVE} {RUN_DIR}; fi"),
              'exit "$status"']
    return "\n".join(lines) + "\n"
