"""Remote jobs through dpdispatcher: profiles, what travels, the job record, the results.

Runs in the light submit-side environment (requirements-local.txt): no torch, no MatterGen.
A job runs `make TARGET` in a copy of the project on the remote side, against a compute
environment that already exists there (the profile's ``make_vars``: a container image's
venv, a cluster's shared venv), so it behaves as it does locally and installs nothing.

Layout of ``remote/jobs/<job-id>/``: ``job.json`` (the record, never a secret),
``task/`` (what travels; removed once the results are in), ``run/`` (the job's run folder),
``make.log``/``make.err`` (the job's output) and ``dpdispatcher.log``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from crygen.fileio import CrygenError, atomic_path, one_line, read_json, sha256_file, sha256_files, sha256_tree, write_json
from crygen.model_source import PUBLISHED_MODELS
from crygen.settings import SECRET_NAME, credentials_file

PROJECT = Path(__file__).resolve().parent.parent
PROFILES = PROJECT / "remote" / "profiles"
JOBS = Path(os.environ.get("CRYGEN_REMOTE_JOBS", PROJECT / "remote" / "jobs"))

# What of the project a job needs. The data it works on travel as inputs (below).
PROJECT_FILES = ("Makefile", "docker/docker.mk", "requirements-remote.txt", "requirements-local.txt",
                 "crygen", "stages", "tests", "data/reference")
SKIPPED = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints")

# Variables that name a file or folder. A local one travels (once per content, see
# ``input_cache``); ``remote:<path>`` or the profile's ``paths`` name one already there.
PATH_VARS = ("DATA", "BASE_MODEL", "MODEL", "RESULTS", "REFERENCE", "POTENTIAL", "REFERENCE_DATA")
# names, not paths, where no file or folder of that name is here: a published MatterGen model
# travels as its name and is found (or downloaded) on the remote side, as crygen.model_source does
KEYWORDS = {"REFERENCE": {"default"}, "POTENTIAL": {"chgnet", "mattersim"}, "BASE_MODEL": set(PUBLISHED_MODELS),
            "MODEL": set(PUBLISHED_MODELS)}
REMOTE_PREFIX = "remote:"
# Set for the job by crygen: the run folder is the job's own, the environment the profile's.
JOB_OWNED_VARS = {"OUT", "EVAL_OUT", "VENV", "PYTHON", "PY", "ENV_READY", "SHELL"}
RUN_DIR, RUN_ARCHIVE, TASK_DIR, SCRIPT = "run", "run.tar.gz", "task", "crygen-job.sh"
OUTLOG, ERRLOG = "make.log", "make.err"

# remote_profile keys whose values are secrets: only ever ${NAME} placeholders in a profile,
# dropped from the machine once its client has logged in (dpdispatcher serialises the
# remote_profile into its records and hashes).
SECRET_KEYS = ("password", "access_key", "app_key", "passphrase", "ticket")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_TARGET = re.compile(r"[a-z][a-z0-9-]*")


# ---------------------------------------------------------------- credentials
def read_credentials() -> dict[str, str]:
    """``NAME=value`` lines of the credentials file, which must be private (mode 0600)."""
    path = credentials_file()
    if not path.is_file():
        return {}
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CrygenError(path, f"mode {mode:o}: a credentials file must be readable by you only (chmod 600)")
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not sep or not _NAME.fullmatch(name):
            raise CrygenError(path, f"line {number}: expected NAME=value")  # never echo a value
        values[name] = value.strip().strip("'\"")
    return values


class Redactor(logging.Filter):
    """Replaces every secret value crygen has read in log records and messages."""

    def __init__(self) -> None:
        super().__init__()
        self.values: set[str] = set()

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self(record.getMessage()), None
        return True


REDACT = Redactor()


# ---------------------------------------------------------------- profiles
@dataclass
class Profile:
    """A machine profile: dpdispatcher's machine and resources dicts plus crygen's settings.

    ``crygen`` settings: ``make_vars`` (variables every job gets, e.g. VENV and ENV_READY for
    the environment on that side), ``paths`` (variables whose value already lies there),
    ``input_cache`` (a folder there keeping inputs by content, so that one is uploaded once),
    ``check_interval`` (seconds between status checks while waiting).
    """

    name: str
    path: Path
    raw: dict

    @classmethod
    def load(cls, name: str) -> "Profile":
        path = Path(name) if name.endswith(".json") else PROFILES / f"{name}.json"
        if not path.is_file():
            known = sorted(p.stem for p in PROFILES.glob("*.json"))
            raise CrygenError(path, f"no such machine profile (profiles: {', '.join(known)}; or a path to a .json)")
        raw = read_json(path)
        if not isinstance(raw, dict) or not {"machine", "resources"} <= raw.keys():
            raise CrygenError(path, "a profile is a JSON object with 'machine' and 'resources' (and optionally 'crygen')")
        unknown = set(raw) - {"machine", "resources", "crygen", "description"}
        if unknown:
            raise CrygenError(path, f"unknown top-level keys {sorted(unknown)}")
        profile = cls(path.stem, path, raw)
        profile._refuse_literal_secrets()
        return profile

    def _refuse_literal_secrets(self) -> None:
        remote_profile = self.raw["machine"].get("remote_profile", {})
        for key in SECRET_KEYS:
            value = remote_profile.get(key)
            if value is not None and not (isinstance(value, str) and _PLACEHOLDER.fullmatch(value)):
                raise CrygenError(self.path, f"machine.remote_profile.{key}: a secret does not belong in a profile; "
                                  f"write ${{NAME}} and set NAME in the environment or in {credentials_file()} (mode 600)")

    def settings(self, lookup: Callable[[str], str | None]) -> dict:
        settings = _expand(self.raw.get("crygen", {}), f"{self.path}: crygen", lookup)
        unknown = set(settings) - {"make_vars", "paths", "input_cache", "check_interval"}
        if unknown:
            raise CrygenError(self.path, f"crygen: unknown keys {sorted(unknown)}")
        return settings

    def machine_and_resources(self, local_root: Path, lookup: Callable[[str], str | None],
                              image: str | None = None) -> tuple[dict, dict]:
        """Both dicts with placeholders filled, checked by dpdispatcher's own argument schema."""
        from dpdispatcher import Machine, Resources

        machine = _expand(self.raw["machine"], f"{self.path}: machine", lookup)
        resources = _expand(self.raw["resources"], f"{self.path}: resources", lookup)
        machine["local_root"] = str(local_root)
        if image:  # Bohrium's two APIs name the image differently
            remote_profile = machine.get("remote_profile", {})
            if "image_address" in remote_profile:
                remote_profile["image_address"] = image
            elif isinstance(remote_profile.get("input_data"), dict):
                remote_profile["input_data"]["image_name"] = image
            else:
                raise CrygenError(self.path, "IMAGE is given but this profile runs no container image")
        resources.setdefault("batch_type", machine.get("batch_type"))  # selects the scheduler's own keys
        for what, schema, value in (("machine", Machine.arginfo(), machine), ("resources", Resources.arginfo(), resources)):
            try:
                schema.check_value(value, strict=True)
            except Exception as e:  # dargs raises several types; all mean a bad profile
                raise CrygenError(self.path, f"{what}: {REDACT(one_line(e))}") from None
        return machine, resources


def _expand(value: Any, where: str, lookup: Callable[[str], str | None]) -> Any:
    """Fill ``${NAME}`` / ``${NAME:-default}``; a value that is one placeholder and reads as a
    JSON number or boolean becomes one (ports, program ids)."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", lookup) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def fill(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = lookup(name)
        if found is None:
            if default is None:
                raise CrygenError(None, f"{where}: ${{{name}}} is not set (environment or {credentials_file()})")
            found = default
        return found

    filled = _PLACEHOLDER.sub(fill, value)
    if _PLACEHOLDER.fullmatch(value):
        with contextlib.suppress(ValueError):
            typed = json.loads(filled)
            if isinstance(typed, (int, float, bool)):
                return typed
    return filled


_SECRETS_TAKEN: dict[str, str] = {}


def make_lookup() -> Callable[[str], str | None]:
    """Placeholders read the environment, then the credentials file; CRYGEN_PROJECT is this
    project, CRYGEN_SCRATCH the local profile's job folder (remote/scratch). A secret read from the environment is taken out of it (a local job's processes
    inherit this one's environment) and registered for redaction."""
    credentials = read_credentials()
    builtins = {"CRYGEN_PROJECT": str(PROJECT),
                "CRYGEN_SCRATCH": os.environ.get("CRYGEN_SCRATCH", str(PROJECT / "remote" / "scratch"))}
    for name in [n for n in os.environ if SECRET_NAME.search(n)]:
        _SECRETS_TAKEN[name] = os.environ.pop(name)
        REDACT.add(_SECRETS_TAKEN[name])

    def lookup(name: str) -> str | None:
        if SECRET_NAME.search(name):
            value = _SECRETS_TAKEN.get(name) or credentials.get(name)
            REDACT.add(value)
            return value
        return builtins.get(name) or os.environ.get(name) or credentials.get(name)

    return lookup


def build_machine(machine_dict: dict):
    """dpdispatcher's Machine, its secrets dropped from the profile it serialises."""
    from dpdispatcher import Machine

    try:
        machine = Machine.load_from_dict(machine_dict)
    except Exception as e:
        raise CrygenError(None, f"cannot set up machine {machine_dict.get('batch_type')}: {REDACT(one_line(e))}") from None
    for key in SECRET_KEYS:
        machine.context.remote_profile.pop(key, None)  # the logged-in client keeps its own copy
    return machine


# ---------------------------------------------------------------- what travels
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
    if not _TARGET.fullmatch(target) or target.startswith("remote"):
        raise CrygenError(None, f"TARGET={target!r}: expected a crygen make target such as pipeline or eval-gen")
    variables = {}
    for name in ("DATA", "BASE_MODEL") + (("RESULTS",) if target == "eval-gen" else ()):
        if defaults.get(name):
            variables[name] = defaults[name]
    for name, value in given.items():
        if not _NAME.fullmatch(name):
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
        elif value in KEYWORDS.get(var, ()) and not Path(value).expanduser().exists():
            continue
        else:
            path = Path(value).expanduser()
            if not path.exists():
                raise CrygenError(path, f"{var}: no such file or folder here (write {var}={REMOTE_PREFIX}<path> "
                                  "for one on the remote side)")
            files = sha256_files(path)
            digest = sha256_tree(path, files)
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
            name = path.resolve().name
            if settings.get("input_cache") and cached(digest):
                inputs.append(Input(var, value, "cached", f"{settings['input_cache']}/{digest}/{name}", digest, size))
            else:
                inputs.append(Input(var, value, "upload", f"inputs/{digest[:16]}/{name}", digest, size, files))
    return inputs


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


def job_script(job_id: str, target: str, make_vars: dict[str, str], inputs: list[Input], cache: str | None) -> str:
    lines = [
        "#!/usr/bin/env bash",
        f"# crygen job {job_id}: `make {target}` in this copy of the project, then its run folder packed.",
        "set -euo pipefail",
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
    command = " ".join(["make", shlex.quote(target)] + [make_quote(f"{k}={v}") for k, v in make_vars.items()])
    lines += [f"status=0; {command} || status=$?",
              f"if [ -d {RUN_DIR} ]; then tar -czf {RUN_ARCHIVE} {RUN_DIR}; fi",
              'exit "$status"']
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- submissions
@contextlib.contextmanager
def dpdispatcher_logging(job_dir: Path) -> Iterator[None]:
    """dpdispatcher logs to the job folder, through the redactor, and only errors to the
    terminal (crygen prints its own progress and a failed job's error tail)."""
    from dpdispatcher.dlog import dlog

    saved = list(dlog.handlers)
    handler = logging.FileHandler(job_dir / "dpdispatcher.log")
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s : %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.ERROR)
    for h in saved:
        dlog.removeHandler(h)
    for h in (handler, console):
        h.addFilter(REDACT)
        dlog.addHandler(h)
    try:
        with contextlib.chdir(job_dir):  # dpdispatcher resolves work_base against the cwd
            yield
    finally:
        for h in (handler, console):
            dlog.removeHandler(h)
        handler.close()
        for h in saved:
            dlog.addHandler(h)


def build_submission(record: dict, job_dir: Path, machine=None):
    """The job's dpdispatcher Submission, the same (same hash) every time it is rebuilt."""
    from dpdispatcher import Resources, Submission, Task

    if machine is None:
        profile = Profile(record["profile"]["name"], Path(record["profile"]["path"]), record["profile"]["raw"])
        machine_dict, _ = profile.machine_and_resources(job_dir, make_lookup(), record.get("image"))
        machine = build_machine(machine_dict)
    task = Task(command=f"bash {SCRIPT}", task_work_path="./", forward_files=record["forward_files"],
                backward_files=[RUN_ARCHIVE, OUTLOG, ERRLOG], outlog=OUTLOG, errlog=ERRLOG)
    resources = Resources.load_from_dict(record["resources"])
    submission = Submission(work_base=TASK_DIR, machine=machine, resources=resources, task_list=[task],
                            forward_common_files=[], backward_common_files=[])
    submission.generate_jobs()  # the hash dpdispatcher keeps its state under includes the jobs
    return submission


def _cache_probe(machine, cache: str | None) -> Callable[[str], bool]:
    """Whether the input cache on the remote side holds a content hash (local or SSH)."""
    if not cache:
        return lambda digest: False
    kind = type(machine.context).__name__
    if kind in ("LocalContext", "LazyLocalContext"):
        return lambda digest: Path(cache, digest, ".complete").exists()
    if kind == "SSHContext":
        sftp = machine.context.ssh_session.sftp

        def probe(digest: str) -> bool:
            try:
                sftp.stat(f"{cache}/{digest}/.complete")
                return True
            except OSError:
                return False

        return probe
    raise CrygenError(None, f"crygen.input_cache works with local and SSH contexts, not {kind}")


def new_job_id(target: str) -> str:
    return f"{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}-{target}-{secrets.token_hex(3)}"


def submit(machine_name: str, target: str, given: dict[str, str], defaults: dict[str, str],
           image: str | None = None, dry_run: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Stage, validate and submit one job; return its folder. Nothing is uploaded unless the
    profile and every input are good."""
    profile = Profile.load(machine_name)
    lookup = make_lookup()
    settings = profile.settings(lookup)
    variables = job_variables(target, given, defaults)
    job_id = new_job_id(target)
    job_dir = JOBS / job_id
    machine_dict, resources = profile.machine_and_resources(job_dir, lookup, image)
    machine = None if dry_run else build_machine(machine_dict)
    cache = settings.get("input_cache")
    inputs = resolve_inputs(variables, settings, _cache_probe(machine, cache) if machine else (lambda d: False))
    make_vars = dict(variables)
    make_vars.update({i.var: i.remote_value for i in inputs})
    make_vars.update({str(k): str(v) for k, v in settings.get("make_vars", {}).items()})
    make_vars["OUT"] = RUN_DIR
    if target == "eval-gen":
        make_vars["EVAL_OUT"] = f"{RUN_DIR}/eval-gen"
    record = {
        "job_id": job_id, "target": target, "machine": profile.name,
        "profile": {"name": profile.name, "path": str(profile.path), "raw": profile.raw},
        "image": image, "variables": variables, "make_vars": make_vars,
        "inputs": [vars(i) for i in inputs], "resources": resources,
        "check_interval": settings.get("check_interval", 30),
        "submitted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": dry_run,
    }
    JOBS.mkdir(parents=True, exist_ok=True)
    with atomic_path(job_dir) as staging:
        task = staging / TASK_DIR
        task.mkdir(parents=True)
        stage_task(task, inputs)
        (task / SCRIPT).write_text(job_script(job_id, target, make_vars, inputs, cache))
        record["manifest"] = write_manifest(task, inputs)
        record["forward_files"] = sorted(p.name for p in task.iterdir())
        if dry_run:
            _describe_dry_run(record, machine_dict, staging)
        write_json(staging / "job.json", record)
    for i in inputs:
        echo(f"  {i.var}: {i.value} -> {i.how} ({i.remote_value})")
    if dry_run:
        echo(f"dry run: job description in {job_dir}/job.json (nothing submitted)")
        return job_dir
    with dpdispatcher_logging(job_dir):
        submission = build_submission(record, job_dir, machine)
        record["submission_hash"] = submission.submission_hash
        record["remote_root"] = submission.machine.context.remote_root
        write_json(job_dir / "job.json", record)
        try:
            submission.run_submission(exit_on_submit=True, clean=False)
        except Exception as e:  # a job that failed at once, or a refused submission
            raise _failure(job_dir, submission, e) from None
    echo(f"submitted job {job_id} to {profile.name} (remote folder {record['remote_root']})")
    return job_dir


def _describe_dry_run(record: dict, machine_dict: dict, staging: Path) -> None:
    """What would be submitted, as dpdispatcher itself checks and builds it, offline."""
    machine = build_machine(machine_dict)  # Bohrium's clients log in on first use, not here
    with contextlib.chdir(staging):
        job = build_submission(record, staging, machine).belonging_jobs[0]
        record["dry_run_description"] = {
            "machine": machine.serialize(),
            "task": {"command": job.job_task_list[0].command, "forward_files": record["forward_files"],
                     "backward_files": job.job_task_list[0].backward_files},
            "script": machine.gen_script(job),
            "task_script": machine.gen_script_command(job),
        }


def load_job(job_id: str) -> tuple[Path, dict]:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise CrygenError(None, f"JOB={job_id!r}: give a job id from remote/jobs/")
    job_dir = JOBS / job_id
    record = read_json(job_dir / "job.json")
    if record.get("dry_run"):
        raise CrygenError(job_dir, "a dry run: nothing was submitted")
    return job_dir, record


def _recover(job_dir: Path, record: dict):
    submission = build_submission(record, job_dir)
    if submission.submission_hash != record.get("submission_hash"):
        raise CrygenError(job_dir / "job.json", "the profile or its environment changed since submission "
                          "(the rebuilt dpdispatcher submission has another hash)")
    submission.try_recover_from_json()
    return submission


def _state(submission) -> str:
    return ",".join(sorted({job.job_state.name for job in submission.belonging_jobs}))


def _failure(job_dir: Path, submission, error: Exception) -> CrygenError:
    """The tail of the remote error log, as one error."""
    with contextlib.suppress(Exception):
        submission.try_download_error_info()
    tails = [p.read_text(errors="replace") for p in (job_dir / TASK_DIR).glob("*_last_err_file")]
    tails += [p.read_text(errors="replace") for p in job_dir.glob("*_last_err_file")]
    tail = "\n".join(t.strip() for t in tails if t.strip())[-2000:] or one_line(error)
    return CrygenError(job_dir, f"remote job failed; tail of its error log:\n{REDACT(tail)}")


def poll(job_dir: Path, record: dict, submission=None) -> tuple[Any, str]:
    """One status check; a terminated job is retried as the profile's retry_count allows."""
    submission = submission or _recover(job_dir, record)
    submission.update_submission_state()
    try:
        submission.handle_unexpected_submission_state()
    except RuntimeError as e:
        raise _failure(job_dir, submission, e) from None
    submission.submission_to_json()
    return submission, "finished" if submission.check_all_finished() else _state(submission)


def status(job_id: str, echo: Callable[[str], None] = print) -> str:
    job_dir, record = load_job(job_id)
    if (job_dir / RUN_DIR).is_dir():
        echo(f"job {job_id}: finished, fetched into {job_dir / RUN_DIR}")
        return "fetched"
    with dpdispatcher_logging(job_dir):
        _, state = poll(job_dir, record)
    echo(f"job {job_id} on {record['machine']}: {state}")
    return state


def fetch(job_id: str, wait: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Collect a finished job's run folder into remote/jobs/<id>/run (waiting first if asked)."""
    job_dir, record = load_job(job_id)
    if (job_dir / RUN_DIR).is_dir():
        return job_dir / RUN_DIR
    interval = float(record["check_interval"])
    started = last_said = time.time()
    with dpdispatcher_logging(job_dir):
        submission, state = poll(job_dir, record)
        said = None
        while state != "finished":
            if not wait:
                raise CrygenError(job_dir, f"job {job_id} is {state}; fetch it when it has finished")
            if state != said or time.time() - last_said >= 60:  # a line per change, else per minute
                echo(f"job {job_id}: {state} ({time.time() - started:.0f} s)")
                said, last_said = state, time.time()
            time.sleep(interval)
            submission, state = poll(job_dir, record, submission)
        try:
            submission.download_jobs()
            submission.clean_jobs()
        except Exception as e:
            raise _failure(job_dir, submission, e) from None
    task = job_dir / TASK_DIR
    if not (task / RUN_ARCHIVE).is_file():
        raise _failure(job_dir, submission, RuntimeError(f"the job left no {RUN_ARCHIVE}"))
    for log in (OUTLOG, ERRLOG):
        if (task / log).is_file():
            os.replace(task / log, job_dir / log)
    run = extract_run(task / RUN_ARCHIVE, job_dir)
    shutil.rmtree(task)
    echo(f"job {job_id}: results in {run}")
    return run


def extract_run(archive: Path, job_dir: Path) -> Path:
    """Unpack the job's run folder; an entry that would land outside ``run/`` (absolute,
    ``..``, a link pointing out, a device) refuses the whole archive."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            parts = PurePosixPath(m.name).parts
            bad = (not parts or m.name.startswith("/") or ".." in parts or parts[0] != RUN_DIR
                   or not (m.isfile() or m.isdir() or m.issym() or m.islnk()))
            if not bad and (m.issym() or m.islnk()):
                base = PurePosixPath(m.name).parent if m.issym() else PurePosixPath()
                target = os.path.normpath(base / m.linkname)
                bad = m.linkname.startswith("/") or not (target == RUN_DIR or target.startswith(RUN_DIR + "/"))
            if bad:
                raise CrygenError(archive, f"entry {m.name!r} would land outside the job folder; archive refused")
        with atomic_path(job_dir / RUN_DIR) as tmp:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tar.extractall(tmp.parent, members=members, filter="data")
    return job_dir / RUN_DIR
