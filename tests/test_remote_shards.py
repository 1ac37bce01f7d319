"""`make remote ... SHARDS=N` (crygen/remote/shards.py): N dpdispatcher tasks in one submission,
their blocks or relaxation parts merged into one run by a second, one-task submission. Against
dpdispatcher's local shell, the one-node Slurm on loopback (plain and as a job array) and a
Bohrium job description checked offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crygen.fileio import CrygenError
from crygen.remote import PROFILES, shards
from crygen.remote.jobs import Dispatcher
from tests.helpers import (FAKE_ACCOUNT, FAKE_SECRETS, IMAGE, NACL_CIF, ROOT, assert_no_secret, assert_ok, cif,
                           make_remote, only_job, ssh_env)

# 4 crystals in blocks of 2 on one thread, so every task draws one block the same way
SAMPLE = ("NUM_GEN=4", "GEN_BATCH=2", "THREADS=1", "RELAX=0")


def crystals(results: Path) -> str:
    return (results / "generated_crystals.extxyz").read_text()


def blocks_by_pid(results: Path) -> dict[int, int]:
    """Which process drew each block, from generation.json's provenance."""
    generation = json.loads((results / "generation.json").read_text())
    return {b["block"]: b["pid"] for b in generation["blocks"]["blocks"]}


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, fast_base_model):
    """The same sample as one local process: what every sharded run must equal."""
    out = tmp_path_factory.mktemp("unsharded")
    assert_ok(make_remote(out, "sample", f"MODEL={fast_base_model}", f"OUT={out}", *SAMPLE))
    return out / "results"


def test_a_sharded_bohrium_dry_run_shows_each_task_with_its_files(tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text("".join(f"{k}={v}\n" for k, v in FAKE_SECRETS.items()))
    creds.chmod(0o600)
    proc = make_remote(tmp_path, "remote", "MACHINE=bohrium", "TARGET=sample", "SHARDS=3", "NUM_GEN=6", "GEN_BATCH=2",
                       f"MODEL={ROOT / 'data' / 'base_model'}", "DRY_RUN=1", f"IMAGE={IMAGE}",
                       env={**FAKE_ACCOUNT, "CRYGEN_CREDENTIALS": str(creds)})
    assert_ok(proc)
    job, record = only_job(tmp_path)
    tasks = record["dry_run_description"]["tasks"]
    assert [t["share"] for t in tasks] == ["1/3", "2/3", "3/3"]
    assert record["shards"]["threads"] == 8  # THREADS=0: the profile's CPUs per task, the same for every task
    for k, t in enumerate(tasks, 1):
        assert t["work_path"] == f"share-{k}" and t["command"] == "bash crygen-job.sh"
        assert t["forward_files"] == ["crygen-job.sh"] and t["backward_files"] == ["run.tar.gz", "make.log", "make.err"]
        assert (t["make_vars"]["SHARE"], t["make_vars"]["THREADS"], t["make_vars"]["OUT"]) == \
            (f"{k}/3", "8", f"share-{k}/run")
        script = (job / "task" / f"share-{k}" / "crygen-job.sh").read_text()
        assert "make remote-share" in script and f"SHARE={k}/3" in script
    # the project and the inputs travel once, as the submission's common files
    assert {"Makefile", "crygen", "inputs", "MANIFEST.sha256"} <= set(record["forward_files"])
    assert not any(name.startswith("share-") for name in record["forward_files"])
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)


def test_local_shell_sharded_sample_equals_an_unsharded_one(tmp_path, fast_base_model, unsharded):
    proc = make_remote(tmp_path, "remote", "MACHINE=local", "TARGET=sample", "SHARDS=2", f"MODEL={fast_base_model}",
                       *SAMPLE)
    assert_ok(proc)
    job, _ = only_job(tmp_path)
    status = make_remote(tmp_path, "remote-status", f"JOB={job.name}")
    assert_ok(status)
    assert "task 1/2 (share-1): " in status.stdout and "task 2/2 (share-2): " in status.stdout, status.stdout
    fetched = make_remote(tmp_path, "remote-fetch", f"JOB={job.name}", "WAIT=1")
    assert_ok(fetched)
    job, record = only_job(tmp_path)
    assert "merge task submitted" in fetched.stdout and f"results in {job / 'run'}" in fetched.stdout
    assert [(t["task"], t["share"], t["state"], t["files_back"]) for t in record["shards"]["tasks"]] == \
        [(1, "1/2", "finished", 1), (2, "2/2", "finished", 1)]
    assert record["shards"]["phase"] == "merge" and record["make_vars"]["SHARDS"] == "1"
    results = job / "run" / "results"
    assert crystals(results) == crystals(unsharded)
    pids = blocks_by_pid(results)
    assert sorted(pids) == [1, 2] and pids[1] != pids[2]  # each block drawn by its own task, none by the merge
    assert (results / "metrics_summary.json").is_file()


def test_a_task_failing_for_good_is_named_and_the_merge_draws_only_its_blocks(tmp_path, monkeypatch, fast_base_model,
                                                                                unsharded):
    """Share 2's task is given a model that is not there: it is retried once (the profile's
    retry_count), then the fetch names it in one line and keeps share 1's blocks; fetching again
    merges, the merge task drawing only share 2's block, and the crystals are an unsharded run's."""
    real = shards.share_make_vars
    monkeypatch.setattr(shards, "share_make_vars", lambda record, k: {
        **real(record, k), **({"MODEL": str(tmp_path / "no-such-model")} if k == 2 else {})})
    monkeypatch.setenv("CRYGEN_REMOTE_JOBS", str(tmp_path / "jobs"))
    monkeypatch.setenv("CRYGEN_SCRATCH", str(tmp_path / "scratch"))
    dispatcher = Dispatcher.from_environment()
    given = {"SHARDS": "2", "MODEL": str(fast_base_model), **dict(v.split("=") for v in SAMPLE)}
    profile = json.loads((PROFILES / "local.json").read_text())
    profile["machine"]["retry_count"] = 1
    (tmp_path / "retry-once.json").write_text(json.dumps(profile))
    job_dir = dispatcher.submit(str(tmp_path / "retry-once.json"), "sample", given, {}, echo=lambda line: None)
    # share 2 fails within a second, so dpdispatcher often retries it before submit returns: the
    # recorded submission must name the job id it retried with, else a poll retries it again
    remote_root = Path(json.loads((job_dir / "job.json").read_text())["remote_root"])
    recorded = json.loads(next(remote_root.glob("*.json")).read_text())
    for job in recorded["belonging_jobs"]:
        (job_hash, fields), = job.items()
        assert str(fields["job_id"]) == (remote_root / f"{job_hash}_job_id").read_text().strip(), fields
    with pytest.raises(CrygenError) as failed:
        dispatcher.fetch(job_dir.name, wait=True, echo=lambda line: None)
    message = str(failed.value)
    assert "task(s) 2/2 of job" in message and "failed for good" in message and "\n" not in message
    record = json.loads((job_dir / "job.json").read_text())
    assert [(t["share"], t["state"], t["fail_count"]) for t in record["shards"]["tasks"]] == \
        [("1/2", "finished", 0), ("2/2", "failed", 2)]
    kept = list((job_dir / "shares" / "share-1" / "run" / "blocks").rglob("block-*"))
    assert len(kept) == 1 and not (job_dir / "shares" / "share-2").exists()

    run = dispatcher.fetch(job_dir.name, wait=True, echo=lambda line: None)
    assert crystals(run / "results") == crystals(unsharded)
    pids = blocks_by_pid(run / "results")
    merge_pid = pids[2]  # share 2's block, drawn by the merge task
    assert pids[1] != merge_pid
    assert json.loads((job_dir / "job.json").read_text())["shards"]["phase"] == "merge"


@pytest.mark.parametrize("batch_type", ["Slurm", "SlurmJobArray"])
def test_slurm_sharded_sample_returns_one_merged_run(batch_type, daemons, tmp_path, fast_base_model, unsharded):
    """N Slurm jobs with the shipped profile; one job array of N tasks with `SlurmJobArray`."""
    _, ssh = daemons
    profile = json.loads((PROFILES / "slurm.json").read_text())
    profile["machine"]["batch_type"] = batch_type
    if batch_type == "SlurmJobArray":
        profile["resources"]["group_size"] = 0  # every task in one job: one array element each
    (tmp_path / "cluster.json").write_text(json.dumps(profile))
    env = ssh_env(ssh, tmp_path / "slurm-root")
    proc = make_remote(tmp_path, "remote", f"MACHINE={tmp_path / 'cluster.json'}", "TARGET=sample", "SHARDS=2",
                       f"MODEL={fast_base_model}", *SAMPLE, "WAIT=1", env=env)
    assert_ok(proc)
    job, record = only_job(tmp_path)
    tasks = record["shards"]["tasks"]
    assert [(t["share"], t["state"]) for t in tasks] == [("1/2", "finished"), ("2/2", "finished")]
    scheduler_ids = {t["scheduler_id"] for t in tasks}
    assert all(scheduler_ids) and len(scheduler_ids) == (1 if batch_type == "SlurmJobArray" else 2)
    assert crystals(job / "run" / "results") == crystals(unsharded)


def test_local_shell_sharded_eval_gen_equals_an_unsharded_one(tmp_path):
    """`make eval-gen` with its relaxation parts spread over two tasks, then merged: the metrics of
    `make eval-gen` here. Two crystals make one part (of 32), so task 2 has nothing to relax."""
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "NaCl.cif").write_text(NACL_CIF)
    (cifs / "CsCl.cif").write_text(cif(["Cs", "Cl"], [(0, 0, 0), (0.5, 0.5, 0.5)], a=4.12, name="CsCl"))
    common = (f"RESULTS={cifs}", "RELAX=1", "THREADS=1")
    proc = make_remote(tmp_path, "remote", "MACHINE=local", "TARGET=eval-gen", "SHARDS=2", *common, "WAIT=1")
    assert_ok(proc)
    job, record = only_job(tmp_path)
    assert [t["files_back"] for t in record["shards"]["tasks"]] == [1, 0]
    here = tmp_path / "here"
    assert_ok(make_remote(tmp_path, "eval-gen", *common, f"EVAL_OUT={here}"))
    remote = json.loads((job / "run" / "eval-gen" / "metrics_summary.json").read_text())
    local = json.loads((here / "metrics_summary.json").read_text())
    assert remote["count"] == local["count"] == 2 and remote["relaxed"] is True
    for key in ("metrics", "additional_metrics", "validity_over_drawn_samples", "uncovered_chemical_systems"):
        assert remote[key] == local[key], key
    assert remote["reference"]["sha256"] == local["reference"]["sha256"]
    assert remote["relaxation_parts"]["key"] == local["relaxation_parts"]["key"]
    assert [p["shard"] for p in remote["relaxation_parts"]["parts"]] == ["1/2"]  # relaxed by task 1, read by the merge


def test_a_sharded_sample_needs_a_fixed_block_size(tmp_path):
    proc = make_remote(tmp_path, "remote", "MACHINE=local", "TARGET=sample", "SHARDS=2",
                       f"MODEL={ROOT / 'data' / 'base_model'}", "DRY_RUN=1")
    assert proc.returncode == 2 and "GEN_BATCH=0 (chosen per machine) with SHARDS=2" in proc.stderr, proc.stderr
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
