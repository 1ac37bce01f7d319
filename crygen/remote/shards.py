"""Sharded remote jobs: ``make remote TARGET=sample|eval-gen SHARDS=N``.

Two submissions under one job id. First the *shares*: one dpdispatcher submission of N tasks,
task k running ``make remote-share SHARE=k/N`` (the stage with ``--share k/N``: its generation
blocks, or relaxation parts, and nothing else) in its own folder ``share-k/`` beside one copy of
the project and the inputs (dpdispatcher's common files), its run folder packed back. Every task
gets the same THREADS (blocks and parts are keyed by it), resolved here when it is 0. Then the
*merge*: when every task has finished (or failed for good), the blocks or parts that came back
are put into one run folder that travels with a one-task submission of the target itself
(SHARDS=1, the same THREADS). The stage finds them on disk and only reads them, drawing (or
relaxing) just what a task that failed for good left missing, and writes the one run folder
that comes back as any job's does. The merge runs remotely because the submitting side has no
compute environment (no torch, no MatterGen; requirements-local.txt).

``make remote TARGET=generate SHARDS=N`` stays one job (its fine-tuned model is made in it),
drawing its blocks in N processes there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from crygen.fileio import CrygenError, write_json
from crygen.remote import RUN_ARCHIVE, RUN_DIR, SCRIPT, TASK_DIR
from crygen.remote.staging import Input, fill_task, job_script, job_task

# what a share leaves under its run folder, by target: the merge task's run folder gets them all
CARRIED = {"sample": "blocks", "eval-gen": "eval-gen/relaxation-parts"}
SHARE_TARGET = "remote-share"


def plan(target: str, variables: dict[str, str], resources: dict) -> dict | None:
    """The sharding of a job, or None for one task. THREADS=0 becomes the profile's CPUs per task."""
    try:
        shards = int(variables.get("SHARDS") or 1)
        threads = int(variables.get("THREADS") or 0)
    except ValueError:
        return None  # the settings check on the other side names the bad value
    if shards <= 1 or target not in CARRIED:
        return None
    if target == "sample" and (variables.get("GEN_BATCH") or "0") == "0":
        # the automatic block size follows each node's free memory: tasks could cut NUM_GEN differently
        raise CrygenError(None, f"GEN_BATCH=0 (chosen per machine) with SHARDS={shards}: give a fixed block size, "
                          "e.g. GEN_BATCH=64 on a GPU, so that every task draws the same blocks")
    threads = threads or int(resources.get("cpu_per_node") or 1)
    return {"count": shards, "threads": threads, "phase": "shares",
            "tasks": [{"task": k, "share": f"{k}/{shards}", "work_path": folder(k)} for k in range(1, shards + 1)]}


def folder(k: int) -> str:
    return f"share-{k}"


def share_make_vars(record: dict, k: int) -> dict[str, str]:
    """Task k's make variables: its share, its own run folder, the job's one THREADS."""
    shards = record["shards"]
    out = f"{folder(k)}/{RUN_DIR}"
    make_vars = {**record["make_vars"], "TARGET": record["target"], "SHARE": f"{k}/{shards['count']}", "OUT": out}
    if record["target"] == "eval-gen":
        make_vars["EVAL_OUT"] = f"{out}/eval-gen"
    return make_vars


def fixed_make_vars(make_vars: dict[str, str], sharding: dict, shards: int) -> dict[str, str]:
    return {**make_vars, "SHARDS": str(shards), "THREADS": str(sharding["threads"])}


def stage_shares(task: Path, record: dict, inputs: list[Input], cache: str | None) -> None:
    """A folder and a script per task beside the project copy (``record['forward_files']`` then
    lists the common files only)."""
    for k in range(1, record["shards"]["count"] + 1):
        (task / folder(k)).mkdir()
        (task / folder(k) / SCRIPT).write_text(
            job_script(record["job_id"], SHARE_TARGET, share_make_vars(record, k), inputs, cache, task_dir=folder(k)))


def share_tasks(record: dict) -> list:
    return [job_task(f"{t['work_path']}/", [SCRIPT]) for t in record["shards"]["tasks"]]


def describe(record: dict, submission) -> list[dict]:
    """The dry run's view of the tasks: each with its files and its command."""
    by_path = {t.task_work_path.rstrip("/"): t for job in submission.belonging_jobs for t in job.job_task_list}
    return [{**t, "command": by_path[t["work_path"]].command, "forward_files": by_path[t["work_path"]].forward_files,
             "backward_files": by_path[t["work_path"]].backward_files, "make_vars": share_make_vars(record, t["task"])}
            for t in record["shards"]["tasks"]]


def state_name(job) -> str:
    """A job's state by name; dpdispatcher keeps a plain int once a submission is read back."""
    from dpdispatcher.utils.job_status import JobStatus

    return "unsubmitted" if job.job_state is None else JobStatus(job.job_state).name


def task_states(record: dict, submission) -> dict[int, dict]:
    """Each task's state as dpdispatcher has it (the state of the job that holds it)."""
    states = {}
    for job in submission.belonging_jobs:
        for t in job.job_task_list:
            k = int(t.task_work_path.rstrip("/").rsplit("-", 1)[1])
            states[k] = {"state": state_name(job), "scheduler_id": job.job_id, "fail_count": job.fail_count}
    return states


def status_lines(record: dict, submission) -> list[str]:
    states = task_states(record, submission)
    return [f"  task {t['share']} ({t['work_path']}): {states[t['task']]['state']}" for t in record["shards"]["tasks"]]


def collect(job_dir: Path, record: dict, submission) -> list[str]:
    """After every task has finished or failed for good: the finished tasks' run folders into
    ``shares/``, each task's state into the record; the failed tasks' shares are returned."""
    from crygen.remote.jobs import extract_run

    submission.download_jobs()  # the tasks that finished; a failed one's files do not come back
    states = task_states(record, submission)
    failed = []
    for t in record["shards"]["tasks"]:
        t.update(states[t["task"]])
        archive = job_dir / TASK_DIR / t["work_path"] / RUN_ARCHIVE
        if t["state"] == "finished" and archive.is_file():
            kept = job_dir / "shares" / t["work_path"]
            if not (kept / RUN_DIR).is_dir():
                extract_run(archive, kept)
            carried = kept / RUN_DIR / CARRIED[record["target"]]
            t["files_back"] = sum(1 for p in carried.rglob("*") if p.is_file()) if carried.is_dir() else 0
        else:
            failed.append(t["share"])
    record["shards"]["failed"] = failed
    write_json(job_dir / "job.json", record)
    return failed


def failed_error(job_dir: Path, record: dict, failed: list[str]) -> CrygenError:
    return CrygenError(job_dir, f"remote job failed: task(s) {', '.join(failed)} of job {record['job_id']} failed "
                       f"for good; the finished tasks' files are kept in {job_dir / 'shares'}; "
                       f"`make remote-fetch JOB={record['job_id']}` again merges them, the merge task running "
                       "what is missing")


def stage_merge(job_dir: Path, record: dict) -> None:
    """The merge task in ``task/`` (the shares' one replaced): the project, the inputs, and every
    block or part that came back (under ``shares/``, copied into ``run/`` there), in the job's
    record as a one-task job."""
    inputs = [Input(**i) for i in record["inputs"]]
    task = job_dir / TASK_DIR
    shutil.rmtree(task, ignore_errors=True)
    task.mkdir()
    carried = CARRIED[record["target"]]
    for share in sorted((job_dir / "shares").glob("share-*")):
        if (share / RUN_DIR / carried).is_dir():
            shutil.copytree(share / RUN_DIR / carried, task / "shares" / carried, dirs_exist_ok=True)
    record["make_vars"] = fixed_make_vars(record["make_vars"], record["shards"], 1)
    fill_task(task, record, inputs, carried=carried if (task / "shares").is_dir() else None)
    record["shards"]["phase"] = "merge"
    record["shards"]["shares_submission_hash"] = record.pop("submission_hash", None)
