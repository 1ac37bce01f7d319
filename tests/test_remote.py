"""`make remote` against real components: dpdispatcher's local shell, an sshd and a one-node
Slurm on loopback, and a Bohrium job description checked offline (dry run)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from crygen.fileio import CrygenError
from crygen.remote import PROFILES
from crygen.remote.credentials import Lookup, Redactor, read_credentials
from crygen.remote.jobs import extract_run
from crygen.remote.profiles import SECRET_KEYS, Profile
from crygen.remote.staging import PATH_VARS, job_script, job_variables, resolve_inputs
from tests.helpers import (FAKE_ACCOUNT, FAKE_SECRETS, IMAGE, NACL_CIF, ROOT, assert_no_secret, assert_ok, demo_subset,
                           make_remote, only_job, ssh_env)


# ---------------------------------------------------------------- profiles, credentials, quoting
@pytest.mark.parametrize("name", ["local", "slurm", "bohrium", "bohrium-openapi"])
def test_shipped_profiles_pass_dpdispatchers_checks(name, tmp_path, monkeypatch):
    for key, value in {**FAKE_ACCOUNT, **FAKE_SECRETS, "CRYGEN_SSH_HOST": "h", "CRYGEN_SSH_USER": "u",
                       "CRYGEN_SSH_KEY": "/k", "CRYGEN_REMOTE_ROOT": "/r", "CRYGEN_REMOTE_VENV": "/v"}.items():
        monkeypatch.setenv(key, value)
    profile = Profile.load(name)
    lookup = Lookup.from_environment(Redactor())
    machine, resources = profile.machine_and_resources(tmp_path, lookup)
    assert machine["local_root"] == str(tmp_path) and resources["batch_type"] == machine["batch_type"]
    if name == "slurm":
        assert machine["remote_profile"]["port"] == 22 and resources["gpu_per_node"] == 1  # typed defaults
    assert set(profile.settings(lookup)["make_vars"]) >= {"VENV", "ENV_READY"}


def test_profile_errors_are_one_line_and_name_the_file(tmp_path, monkeypatch):
    for name in ("CRYGEN_SSH_HOST", "CRYGEN_REMOTE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CrygenError, match=r"slurm.json: machine\.remote_root: \$\{CRYGEN_REMOTE_ROOT\} is not set"):
        Profile.load("slurm").machine_and_resources(tmp_path, Lookup.from_environment(Redactor()))
    literal = tmp_path / "literal.json"
    raw = json.loads((PROFILES / "bohrium.json").read_text())
    raw["machine"]["remote_profile"]["password"] = "hunter2hunter2"
    literal.write_text(json.dumps(raw))
    with pytest.raises(CrygenError, match="a secret does not belong in a profile") as e:
        Profile.load(str(literal))
    assert str(literal) in str(e.value) and "hunter2" not in str(e.value)
    bad = tmp_path / "bad.json"
    raw = json.loads((PROFILES / "local.json").read_text())
    raw["resources"]["cpu_per_node"] = "many"
    bad.write_text(json.dumps(raw))
    with pytest.raises(CrygenError, match=r"resources: .*cpu_per_node") as e:
        Profile.load(str(bad)).machine_and_resources(tmp_path, Lookup.from_environment(Redactor()))
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(CrygenError, match="no such machine profile"):
        Profile.load("no-such-cluster")


@pytest.mark.parametrize("key, value", [("check_intervall", 2), ("check_interval", "often"), ("make_vars", ["VENV"]),
                                        ("input_cache", 7)])
def test_a_bad_crygen_section_is_refused_in_one_line_naming_the_file(key, value, tmp_path):
    raw = json.loads((PROFILES / "local.json").read_text())
    raw["crygen"][key] = value
    bad = tmp_path / "bad-crygen.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(CrygenError, match=rf"crygen: .*`{key}`") as e:
        Profile.load(str(bad)).settings(Lookup.from_environment(Redactor()))
    assert str(e.value).startswith(f"{bad}: ") and len(str(e.value).splitlines()) == 1


def test_the_crygen_section_is_documented_from_its_schema():
    proc = subprocess.run([sys.executable, "-m", "crygen.remote", "profile-doc"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    settings = Profile.load("local").settings(Lookup.from_environment(Redactor()))
    for key in settings:  # every key a profile's crygen section takes, with its path in the docs
        assert f"argument path: ``crygen/{key}``" in proc.stdout, proc.stdout


def test_remote_jobs_and_runner_docker_take_the_same_inputs(tmp_path):
    """A path variable travels with a remote job exactly when RUNNER=docker mounts it: both
    lists are crygen/settings.py's path_settings()."""
    given = {}
    for var in PATH_VARS:
        given[var] = tmp_path / var.lower()
        given[var].mkdir()
    plan = subprocess.run(["make", "-C", str(ROOT), "-n", "pipeline", "RUNNER=docker", "DOCKER_IMAGE=crygen:test",
                           f"OUT={tmp_path / 'run'}", *(f"{k}={v}" for k, v in given.items())],
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    run = next(line for line in plan.stdout.splitlines() if " run --rm" in line)
    assert all(f"-v {path}:{path}" in run for path in given.values()), run
    travelling = resolve_inputs({k: str(v) for k, v in given.items()}, {}, lambda d: False)
    assert [i.var for i in travelling] == list(PATH_VARS) and set(PATH_VARS) >= {"DATA", "REFERENCE_DATA"}


def test_credentials_file_must_be_private(tmp_path, monkeypatch):
    creds = tmp_path / "credentials"
    creds.write_text(f"BOHRIUM_PASSWORD={FAKE_SECRETS['BOHRIUM_PASSWORD']}\n")
    monkeypatch.setenv("CRYGEN_CREDENTIALS", str(creds))
    creds.chmod(0o644)
    with pytest.raises(CrygenError, match="chmod 600") as e:
        read_credentials()
    assert str(creds) in str(e.value) and FAKE_SECRETS["BOHRIUM_PASSWORD"] not in str(e.value)
    creds.chmod(0o600)
    assert read_credentials() == {"BOHRIUM_PASSWORD": FAKE_SECRETS["BOHRIUM_PASSWORD"]}


def test_user_values_are_quoted_in_the_job_script(tmp_path):
    hostile = f"1; touch {tmp_path}/pwned $(touch {tmp_path}/pwned2) `id` 'q' $HOME"
    script = job_script("j", "pipeline", {"EPOCHS": hostile, "OUT": "run"}, [], None)
    make_line = next(line for line in script.splitlines() if line.startswith("status=0; make "))
    # run that line with real bash and make: the Makefile writes back exactly what make got
    (tmp_path / "Makefile").write_text("pipeline:\n\t$(file >got.txt,$(EPOCHS))\n")
    subprocess.run(["bash", "-c", make_line], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "got.txt").read_text() == hostile + "\n"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    with pytest.raises(CrygenError, match="TARGET"):
        job_variables("pipeline; rm -rf /", {}, {})


# ---------------------------------------------------------------- downloaded archives
def _tar(path: Path, members: list[tuple[str, str | None, str | None]]) -> Path:
    """(name, file content or None, symlink target or None) -> a .tar.gz."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                data = (content or "").encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("evil", [("run/../../escaped.txt", "x", None), ("/tmp/absolute.txt", "x", None),
                                  ("elsewhere.txt", "x", None), ("run/link", None, "../../outside"),
                                  ("run/abs-link", None, "/etc/passwd")])
def test_an_archive_reaching_outside_the_job_folder_is_refused(tmp_path, evil):
    archive = _tar(tmp_path / "run.tar.gz", [("run/summary.json", "{}", None), evil])
    job = tmp_path / "job"
    job.mkdir()
    with pytest.raises(CrygenError, match="outside the job folder; archive refused"):
        extract_run(archive, job)
    assert list(job.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_a_good_archive_is_unpacked_into_run(tmp_path):
    archive = _tar(tmp_path / "run.tar.gz", [("run/summary.json", '{"ok": 1}', None),
                                             ("run/generation/x.txt", "y", None), ("run/latest", None, "summary.json")])
    run = extract_run(archive, tmp_path)
    assert json.loads((run / "summary.json").read_text()) == {"ok": 1}
    assert (run / "latest").resolve() == (run / "summary.json").resolve()


# ---------------------------------------------------------------- Bohrium, offline
@pytest.mark.parametrize("profile", ["bohrium", "bohrium-openapi"])
def test_bohrium_dry_run_builds_a_checked_job_without_secrets(profile, tmp_path):
    creds = tmp_path / "credentials"  # the password from a 0600 file, the rest from the environment
    creds.write_text("".join(f"{k}={v}\n" for k, v in FAKE_SECRETS.items()))
    creds.chmod(0o600)
    proc = make_remote(tmp_path, "remote", f"MACHINE={profile}", "TARGET=pipeline", "DRY_RUN=1", f"IMAGE={IMAGE}",
                       "EPOCHS=3", "NUM_GEN=64", env={**FAKE_ACCOUNT, "CRYGEN_CREDENTIALS": str(creds)})
    assert_ok(proc)
    job, record = only_job(tmp_path)
    described = record["dry_run_description"]
    remote_profile = described["machine"]["remote_profile"]
    if profile == "bohrium":
        input_data = remote_profile["input_data"]
        assert (input_data["image_name"], input_data["scass_type"], input_data["platform"], input_data["job_type"]) == \
            (IMAGE, "1 * NVIDIA V100_32g", "ali", "container")
        assert remote_profile["program_id"] == 12345 and remote_profile["email"] == FAKE_ACCOUNT["BOHRIUM_EMAIL"]
    else:
        assert (remote_profile["image_address"], remote_profile["machine_type"], remote_profile["platform"]) == \
            (IMAGE, "1 * NVIDIA V100_32g", "ali")
    assert not set(SECRET_KEYS) & set(remote_profile)
    assert described["task"]["backward_files"] == ["run.tar.gz", "make.log", "make.err"]
    assert {"Makefile", "crygen", "stages", "data", "inputs", "MANIFEST.sha256", "crygen-job.sh"} <= \
        set(described["task"]["forward_files"])
    assert "bash crygen-job.sh" in described["task_script"]
    assert record["make_vars"]["EPOCHS"] == "3" and record["make_vars"]["OUT"] == "run"
    assert record["make_vars"]["VENV"] == "/opt/crygen/.venv"
    assert {i["var"]: i["how"] for i in record["inputs"]} == {"DATA": "upload", "BASE_MODEL": "upload"}
    script = (job / "task" / "crygen-job.sh").read_text()
    assert "sha256sum --quiet --strict -c MANIFEST.sha256" in script and "make pipeline" in script
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)


def test_a_secret_on_makes_command_line_is_refused_before_anything_is_written(tmp_path):
    """Everyone sees a command line (ps) and the shell keeps it: make stops in one line naming
    the variable, never its value, and no job folder is made."""
    password = FAKE_SECRETS["BOHRIUM_PASSWORD"]
    proc = make_remote(tmp_path, "remote", "MACHINE=bohrium", "TARGET=pipeline", "DRY_RUN=1", f"IMAGE={IMAGE}",
                       f"BOHRIUM_PASSWORD={password}",
                       env={**FAKE_ACCOUNT, "BOHRIUM_ACCESS_KEY": FAKE_SECRETS["BOHRIUM_ACCESS_KEY"]})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BOHRIUM_PASSWORD: a secret on make's command line" in lines[0], proc.stderr
    assert password not in proc.stdout + proc.stderr
    assert not (tmp_path / "jobs").exists()
    with pytest.raises(CrygenError, match="BOHRIUM_PASSWORD: a secret travels only from the environment"):
        job_variables("pipeline", {"BOHRIUM_PASSWORD": password}, {})  # nor does job.py pass one on


@pytest.mark.parametrize("profile", ["bohrium", "bohrium-openapi"])
def test_secrets_from_the_environment_are_in_no_file_a_dry_run_writes(profile, tmp_path):
    proc = make_remote(tmp_path, "remote", f"MACHINE={profile}", "TARGET=pipeline", "DRY_RUN=1", f"IMAGE={IMAGE}",
                       "EPOCHS=2", env={**FAKE_ACCOUNT, **FAKE_SECRETS, "CRYGEN_CREDENTIALS": str(tmp_path / "none")})
    assert_ok(proc)
    job, record = only_job(tmp_path)
    assert record["make_vars"]["EPOCHS"] == "2" and (job / "task" / "crygen-job.sh").is_file()
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)


def test_a_bad_profile_stops_before_anything_is_staged(tmp_path):
    proc = make_remote(tmp_path, "remote", "MACHINE=bohrium", "TARGET=pipeline", "DRY_RUN=1",
                       env={"CRYGEN_CREDENTIALS": str(tmp_path / "none")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-2].startswith("remote: error: ") and "is not set" in proc.stderr
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


# ---------------------------------------------------------------- the local shell
def test_local_shell_runs_the_pipeline_end_to_end(local_shell_run):
    tmp_path, proc = local_shell_run
    assert_ok(proc)
    job, record = only_job(tmp_path)
    run = job / "run"
    assert f"results in {run}" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["generation_eval"]["metrics"]["avg_structure_validity"] >= 0.0
    assert (run / "generation" / "results" / "generated_crystals.extxyz").is_file()
    assert (run / "evaluation" / "metrics.json").is_file() and (job / "make.log").is_file()
    assert not (job / "task").exists()  # what travelled is gone once the results are in
    assert record["make_vars"]["EPOCHS"] == "2" and record["make_vars"]["NUM_GEN"] == "2"
    assert_no_secret(tmp_path, proc.stdout, proc.stderr)


def test_a_failed_job_shows_its_error_and_exits_non_zero(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("material_id,cif\n")
    proc = make_remote(tmp_path, "remote", "MACHINE=local", "TARGET=prepare-data", f"DATA={empty}", "WAIT=1")
    assert proc.returncode != 0
    assert "remote job failed; tail of its error log" in proc.stderr
    assert "prepare_data: error:" in proc.stderr and "empty.csv" in proc.stderr


# ---------------------------------------------------------------- SSH and Slurm on loopback


def test_ssh_shell_uploads_an_input_once(daemons, tmp_path):
    _, ssh = daemons
    profile = json.loads((PROFILES / "slurm.json").read_text())
    profile["machine"]["batch_type"] = "Shell"  # SSH alone: the job runs in the login shell
    profile["resources"].pop("queue_name")
    (tmp_path / "ssh-shell.json").write_text(json.dumps(profile))
    data = demo_subset(tmp_path / "ten.extxyz", 10)
    env = ssh_env(ssh, tmp_path / "ssh-root")
    for attempt in (1, 2):
        proc = make_remote(tmp_path, "remote", f"MACHINE={tmp_path / 'ssh-shell.json'}", "TARGET=prepare-data",
                           f"DATA={data}", "VAL_FRACTION=0.2", "WAIT=1", env=env)
        assert_ok(proc)
        job, record = only_job(tmp_path)
        assert json.loads((job / "run" / "data" / "dataset.json").read_text())["n_val"] == 2
        how = {i["var"]: i["how"] for i in record["inputs"]}
        if attempt == 1:
            assert how == {"DATA": "upload", "BASE_MODEL": "upload"}
        else:  # the same content is already in the input cache over there: nothing travels again
            assert how == {"DATA": "cached", "BASE_MODEL": "cached"} and "inputs" not in record["forward_files"]
            assert "-> cached" in proc.stdout


def test_slurm_over_ssh_submit_status_fetch(daemons, tmp_path):
    _, ssh = daemons
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "NaCl.cif").write_text(NACL_CIF)
    env = ssh_env(ssh, tmp_path / "slurm-root")
    proc = make_remote(tmp_path, "remote", "MACHINE=slurm", "TARGET=eval-gen", f"RESULTS={cifs}", "RELAX=0", env=env)
    assert_ok(proc)
    job, record = only_job(tmp_path)
    assert f"make remote-status JOB={job.name}" in proc.stdout
    status = make_remote(tmp_path, "remote-status", f"JOB={job.name}", env=env)
    assert_ok(status)
    assert f"job {job.name} on slurm:" in status.stdout
    fetched = make_remote(tmp_path, "remote-fetch", f"JOB={job.name}", "WAIT=1", env=env)
    assert_ok(fetched)
    metrics = json.loads((job / "run" / "eval-gen" / "metrics_summary.json").read_text())
    assert metrics["count"] == 1 and metrics["relaxed"] is False
    slurm, _ = daemons  # Slurm itself ran it: its job table holds a job in that submission's folder
    jobs = subprocess.run(["scontrol", "-o", "show", "jobs"], capture_output=True, text=True, env=slurm.env).stdout
    assert f"WorkDir={tmp_path / 'slurm-root'}" in jobs and "JobState=COMPLETED" in jobs


def test_a_published_model_name_travels_as_a_name(tmp_path, monkeypatch):
    """BASE_MODEL=mattergen_base is found in the remote side's Hugging Face cache, not uploaded;
    a folder of that name here is a folder, and travels."""
    monkeypatch.chdir(tmp_path)
    assert resolve_inputs({"BASE_MODEL": "mattergen_base", "MODEL": "chemical_system"}, {}, lambda d: False) == []
    (tmp_path / "mattergen_base").mkdir()
    (tmp_path / "mattergen_base" / "config.yaml").write_text("lightning_module: {}\n")
    inputs = resolve_inputs({"BASE_MODEL": "mattergen_base"}, {}, lambda d: False)
    assert [(i.var, i.how) for i in inputs] == [("BASE_MODEL", "upload")]


def test_a_reference_build_share_travels_as_a_job(tmp_path):
    """`make remote TARGET=reference PART=2/4`: the job runs that share of the reference build,
    its parts landing in the run folder that comes back (OUT/reference-build)."""
    creds = tmp_path / "credentials"
    creds.write_text("".join(f"{k}={v}\n" for k, v in FAKE_SECRETS.items()))
    creds.chmod(0o600)
    proc = make_remote(tmp_path, "remote", "MACHINE=bohrium", "TARGET=reference", "PART=2/4", "DRY_RUN=1",
                       f"IMAGE={IMAGE}", env={**FAKE_ACCOUNT, "CRYGEN_CREDENTIALS": str(creds)})
    assert_ok(proc)
    job, record = only_job(tmp_path)
    assert record["make_vars"]["PART"] == "2/4" and record["make_vars"]["OUT"] == "run"
    script = (job / "task" / "crygen-job.sh").read_text()
    assert "make reference" in script
    # the shipped reference travels: the job resumes from it instead of relaxing everything again
    assert "data" in record["dry_run_description"]["task"]["forward_files"]
    plan = subprocess.run(["make", "-C", str(ROOT), "-n", "reference", "OUT=run", "PART=2/4"],
                          capture_output=True, text=True, check=True).stdout
    assert "--work run/reference-build --part 2/4" in plan

