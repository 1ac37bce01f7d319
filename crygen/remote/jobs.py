"""Job folders and what one command does with them: submit, check, fetch, unpack.

:class:`JobStore` is the folder of job folders (remote/jobs, or CRYGEN_REMOTE_JOBS), read from
the environment when a command starts. :class:`Dispatcher` is one command's work with it: it
owns the :class:`Redactor` that masks every secret the command reads (in dpdispatcher's log,
in errors) and the placeholder :class:`Lookup`, made when first needed.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import secrets
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from crygen.fileio import CrygenError, atomic_path, one_line, read_json, write_json
from crygen.remote import ERRLOG, OUTLOG, PROJECT, RUN_ARCHIVE, RUN_DIR, TASK_DIR
from crygen.remote import shards
from crygen.remote.credentials import Lookup, Redactor
from crygen.remote.profiles import Profile, build_machine
from crygen.remote.staging import Input, fill_task, job_make_vars, job_task, job_variables, resolve_inputs


@dataclass(frozen=True)
class JobStore:
    """``remote/jobs/``: a folder per job, named by its id."""

    root: Path

    @classmethod
    def from_environment(cls) -> "JobStore":
        return cls(Path(os.environ.get("CRYGEN_REMOTE_JOBS", PROJECT / "remote" / "jobs")))

    def new_id(self, target: str) -> str:
        return f"{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}-{target}-{secrets.token_hex(3)}"

    def load(self, job_id: str) -> tuple[Path, dict]:
        """A submitted job's folder and record."""
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise CrygenError(None, f"JOB={job_id!r}: give a job id from remote/jobs/")
        job_dir = self.root / job_id
        record = read_json(job_dir / "job.json")
        if record.get("dry_run"):
            raise CrygenError(job_dir, "a dry run: nothing was submitted")
        return job_dir, record


class Dispatcher:
    """One command's submissions, status checks and fetches."""

    def __init__(self, store: JobStore, redact: Redactor | None = None) -> None:
        self.store = store
        self.redact = redact or Redactor()
        self._lookup: Lookup | None = None

    @classmethod
    def from_environment(cls) -> "Dispatcher":
        return cls(JobStore.from_environment())

    @property
    def lookup(self) -> Lookup:
        """Made on first use: it reads the credentials file and takes secrets out of the environment."""
        if self._lookup is None:
            self._lookup = Lookup.from_environment(self.redact)
        return self._lookup

    @contextlib.contextmanager
    def logging_to(self, job_dir: Path) -> Iterator[None]:
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
            h.addFilter(self.redact)
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

    def build_submission(self, record: dict, job_dir: Path, machine=None):
        """The job's dpdispatcher Submission, the same (same hash) every time it is rebuilt."""
        from dpdispatcher import Resources, Submission

        if machine is None:
            profile = Profile(record["profile"]["name"], Path(record["profile"]["path"]), record["profile"]["raw"])
            machine_dict, _ = profile.machine_and_resources(job_dir, self.lookup, record.get("image"))
            machine = build_machine(machine_dict, self.redact)
        sharded = _phase(record) == "shares"  # N tasks beside one copy of the project (crygen/remote/shards.py)
        tasks = shards.share_tasks(record) if sharded else [job_task("./", record["forward_files"])]
        resources = Resources.load_from_dict(record["resources"])
        submission = Submission(work_base=TASK_DIR, machine=machine, resources=resources, task_list=tasks,
                                forward_common_files=record["forward_files"] if sharded else [],
                                backward_common_files=[], continue_on_failure=sharded)
        submission.generate_jobs()  # the hash dpdispatcher keeps its state under includes the jobs
        return submission

    # ------------------------------------------------------------ submit
    def submit(self, machine_name: str, target: str, given: dict[str, str], defaults: dict[str, str],
               image: str | None = None, dry_run: bool = False, echo: Callable[[str], None] = print) -> Path:
        """Stage, validate and submit one job; return its folder. Nothing is uploaded unless the
        profile and every input are good."""
        profile = Profile.load(machine_name)
        settings = profile.settings(self.lookup)
        variables = job_variables(target, given, defaults)
        job_id = self.store.new_id(target)
        job_dir = self.store.root / job_id
        machine_dict, resources = profile.machine_and_resources(job_dir, self.lookup, image)
        machine = None if dry_run else build_machine(machine_dict, self.redact)
        cache = settings["input_cache"]
        inputs = resolve_inputs(variables, settings, _cache_probe(machine, cache) if machine else (lambda d: False))
        make_vars = job_make_vars(target, variables, inputs, settings)
        sharding = shards.plan(target, variables, resources)
        if sharding:
            make_vars = shards.fixed_make_vars(make_vars, sharding, sharding["count"])
        record = {
            "job_id": job_id, "target": target, "machine": profile.name,
            "profile": {"name": profile.name, "path": str(profile.path), "raw": profile.raw},
            "image": image, "variables": variables, "make_vars": make_vars,
            "inputs": [vars(i) for i in inputs], "resources": resources,
            "check_interval": settings["check_interval"], "input_cache": cache,
            **({"shards": sharding} if sharding else {}),
            "submitted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "dry_run": dry_run,
        }
        self._stage(job_dir, record, inputs, cache, machine_dict if dry_run else None)
        for i in inputs:
            echo(f"  {i.var}: {i.value} -> {i.how} ({i.remote_value})")
        if dry_run:
            echo(f"dry run: job description in {job_dir}/job.json (nothing submitted)")
            return job_dir
        self._send(job_dir, record, machine)
        echo(f"submitted job {job_id} to {profile.name} (remote folder {record['remote_root']})")
        return job_dir

    def _stage(self, job_dir: Path, record: dict, inputs: list[Input], cache: str | None,
               dry_run_machine: dict | None) -> None:
        """The job folder with its task and record, written whole or not at all."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(job_dir) as staging:
            task = staging / TASK_DIR
            task.mkdir(parents=True)
            fill_task(task, record, inputs, shares=(lambda t: shards.stage_shares(t, record, inputs, cache))
                      if record.get("shards") else None)
            if dry_run_machine is not None:
                self._describe_dry_run(record, dry_run_machine, staging)
            write_json(staging / "job.json", record)

    def _describe_dry_run(self, record: dict, machine_dict: dict, staging: Path) -> None:
        """What would be submitted, as dpdispatcher itself checks and builds it, offline."""
        machine = build_machine(machine_dict, self.redact)  # Bohrium's clients log in on first use, not here
        with contextlib.chdir(staging):
            submission = self.build_submission(record, staging, machine)
            job = submission.belonging_jobs[0]
            record["dry_run_description"] = {
                "machine": machine.serialize(),
                "task": {"command": job.job_task_list[0].command, "forward_files": record["forward_files"],
                         "backward_files": job.job_task_list[0].backward_files},
                "script": machine.gen_script(job),
                "task_script": machine.gen_script_command(job),
            }
            if record.get("shards"):
                record["dry_run_description"]["tasks"] = shards.describe(record, submission)

    def _send(self, job_dir: Path, record: dict, machine) -> None:
        with self.logging_to(job_dir):
            submission = self.build_submission(record, job_dir, machine)
            record["submission_hash"] = submission.submission_hash
            record["remote_root"] = submission.machine.context.remote_root
            write_json(job_dir / "job.json", record)
            try:
                submission.run_submission(exit_on_submit=True, clean=False)
                # A job that fails within run_submission's first second is resubmitted there, and
                # exit_on_submit returns without recording it: the next poll would then resubmit the
                # old job id again, and two runs of one job script share its failure flag (a failed
                # task then reads as finished). Record the state it returned with.
                submission.submission_to_json()
            except Exception as e:  # a job that failed at once, or a refused submission
                raise self.failure(job_dir, submission, e) from None

    # ------------------------------------------------------------ check, fetch
    def recover(self, job_dir: Path, record: dict):
        submission = self.build_submission(record, job_dir)
        if submission.submission_hash != record.get("submission_hash"):
            raise CrygenError(job_dir / "job.json", "the profile or its environment changed since submission "
                              "(the rebuilt dpdispatcher submission has another hash)")
        submission.try_recover_from_json()
        return submission

    def failure(self, job_dir: Path, submission, error: Exception) -> CrygenError:
        """The tail of the remote error log, as one error."""
        with contextlib.suppress(Exception):
            submission.try_download_error_info()
        tails = [p.read_text(errors="replace") for p in (job_dir / TASK_DIR).glob("*_last_err_file")]
        tails += [p.read_text(errors="replace") for p in job_dir.glob("*_last_err_file")]
        tail = "\n".join(t.strip() for t in tails if t.strip())[-2000:] or one_line(error)
        return CrygenError(job_dir, f"remote job failed; tail of its error log:\n{self.redact(tail)}")

    def poll(self, job_dir: Path, record: dict, submission=None) -> tuple[Any, str]:
        """One status check; a terminated job is retried as the profile's retry_count allows."""
        submission = submission or self.recover(job_dir, record)
        submission.update_submission_state()
        try:
            submission.handle_unexpected_submission_state(continue_on_failure=submission.continue_on_failure)
        except RuntimeError as e:
            raise self.failure(job_dir, submission, e) from None
        submission.submission_to_json()
        return submission, "finished" if submission.check_all_finished() else _state(submission)

    def status(self, job_id: str, echo: Callable[[str], None] = print) -> str:
        job_dir, record = self.store.load(job_id)
        if (job_dir / RUN_DIR).is_dir():
            echo(f"job {job_id}: finished, fetched into {job_dir / RUN_DIR}")
            return "fetched"
        with self.logging_to(job_dir):
            submission, state = self.poll(job_dir, record)
        phase = f" ({_phase(record)} of {record['shards']['count']} shares)" if record.get("shards") else ""
        echo(f"job {job_id} on {record['machine']}{phase}: {state}")
        if _phase(record) == "shares":
            for line in shards.status_lines(record, submission):
                echo(line)
        return state

    def fetch(self, job_id: str, wait: bool = False, echo: Callable[[str], None] = print) -> Path:
        """Collect a finished job's run folder into remote/jobs/<id>/run (waiting first if asked)."""
        job_dir, record = self.store.load(job_id)
        if (job_dir / RUN_DIR).is_dir():
            return job_dir / RUN_DIR
        if _phase(record) == "shares":
            self._merge_shares(job_id, job_dir, record, wait, echo)
        with self.logging_to(job_dir):
            submission = self._wait(job_id, job_dir, record, wait, echo)
            try:
                submission.download_jobs()
                submission.clean_jobs()
            except Exception as e:
                raise self.failure(job_dir, submission, e) from None
        task = job_dir / TASK_DIR
        if not (task / RUN_ARCHIVE).is_file():
            raise self.failure(job_dir, submission, RuntimeError(f"the job left no {RUN_ARCHIVE}"))
        for log in (OUTLOG, ERRLOG):
            if (task / log).is_file():
                os.replace(task / log, job_dir / log)
        run = extract_run(task / RUN_ARCHIVE, job_dir)
        shutil.rmtree(task)
        echo(f"job {job_id}: results in {run}")
        return run

    def _merge_shares(self, job_id: str, job_dir: Path, record: dict, wait: bool, echo: Callable[[str], None]) -> None:
        """Every task finished (or failed for good, named in the error): what came back goes to
        the merge task, submitted as the job's second submission (crygen/remote/shards.py)."""
        with self.logging_to(job_dir):
            if record["shards"].get("failed") is None:
                submission = self._wait(job_id, job_dir, record, wait, echo)
                failed = shards.collect(job_dir, record, submission)
                if failed:
                    raise shards.failed_error(job_dir, record, failed)
        shards.stage_merge(job_dir, record)  # in the submitting folder, where relative inputs lie
        self._send(job_dir, record, None)
        echo(f"job {job_id}: {record['shards']['count']} shares collected; merge task submitted")

    def _wait(self, job_id: str, job_dir: Path, record: dict, wait: bool, echo: Callable[[str], None]):
        """The finished submission; an unfinished one waits if asked, else is an error."""
        interval = float(record["check_interval"])
        started = last_said = time.time()
        submission, state = self.poll(job_dir, record)
        said = None
        while state != "finished":
            if not wait:
                raise CrygenError(job_dir, f"job {job_id} is {state}; fetch it when it has finished")
            if state != said or time.time() - last_said >= 60:  # a line per change, else per minute
                echo(f"job {job_id}: {state} ({time.time() - started:.0f} s)")
                said, last_said = state, time.time()
            time.sleep(interval)
            submission, state = self.poll(job_dir, record, submission)
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


def _phase(record: dict) -> str | None:
    return record.get("shards", {}).get("phase")


def _state(submission) -> str:
    return ",".join(sorted({shards.state_name(job) for job in submission.belonging_jobs}))


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
