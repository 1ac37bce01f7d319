"""The container image: its Dockerfile's lint, how RUNNER=docker runs a target in it, and
(where an engine runs and CRYGEN_DOCKER_TESTS=1, as in .ci/run) the pipeline inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # without the outer make's MAKEFLAGS, whose command-line variables (PYTEST_ARGS=...) would
    # otherwise reach this make as the caller's own
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", *args], capture_output=True,
                          text=True, env={**outer, **(env or {})})


def test_dockerfile_passes_hadolint_at_error_level():
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run([str(hadolint), "--failure-threshold", "error", str(ROOT / "docker" / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runner_docker_runs_the_goal_in_the_image_with_run_folder_and_inputs_mounted(tmp_path):
    data = tmp_path / "mine.extxyz"
    data.write_text("")
    plan = make("-n", "pipeline", "RUNNER=docker", "DOCKER_IMAGE=crygen:test", "OUT=runs/docker-plan",
                f"DATA={data}", "EPOCHS=1", "NUM_GEN=2", "RESULTS=absent-folder")
    assert plan.returncode == 0, plan.stderr
    run = [l for l in plan.stdout.splitlines() if " run --rm" in l]
    assert len(run) == 1 and "stages/" not in plan.stdout, plan.stdout  # nothing runs here
    run = run[0]
    assert "--network=none" in run and '--user "$(id -u):$(id -g)"' in run
    assert f"-v {ROOT}/runs/docker-plan:/opt/crygen/runs/docker-plan" in run
    assert f"-v {data}:{data}" in run
    assert "absent-folder:" not in run  # a missing input is not mounted: the stage names it
    args = run.split(" crygen:test ")[1].split()
    assert args[0] == "pipeline" and args[-2:] == ["ENV_READY=1", "VENV=/opt/crygen/.venv"]
    assert set(args[1:-2]) == {"OUT='runs/docker-plan'", f"DATA='{data}'", "EPOCHS='1'", "NUM_GEN='2'",
                               "RESULTS='absent-folder'"}  # the caller's variables, as given
    assert not (ROOT / "runs" / "docker-plan").exists()  # no stamps written on this side


def test_runner_docker_without_an_engine_says_so_in_one_line(tmp_path):
    proc = make("pipeline", "RUNNER=docker", f"OUT={tmp_path / 'run'}",
                env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[0].startswith(f"RUNNER=docker: no container engine reachable at unix://{tmp_path}")


def engine_reachable() -> bool:
    try:
        return subprocess.run(["docker", "version"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def require_engine():
    if os.environ.get("CRYGEN_DOCKER_TESTS") != "1":
        pytest.skip("needs a container engine: CRYGEN_DOCKER_TESTS=1 and DOCKER_HOST (.ci/run has both)")
    assert engine_reachable(), "CRYGEN_DOCKER_TESTS=1 but no container engine is reachable (DOCKER_HOST)"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True)
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def test_default_base_is_a_cuda_pytorch_image_that_falls_back_offline_and_a_named_one_does_not():
    require_engine()
    cuda_base = make("--eval", "pb: ; @echo $(BASE_IMAGE) $(LOCAL_BASE)", "pb").stdout.split()
    assert cuda_base[0].startswith("pytorch/pytorch:") and "cuda" in cuda_base[0], cuda_base
    resolve = [str(ROOT / "docker" / "resolve-base.sh")]
    if docker("image", "inspect", cuda_base[0], check=False).returncode == 0:
        pytest.skip(f"the engine has {cuda_base[0]}: nothing falls back")
    # no registry answers here: the default gives way to the local Debian base, saying why
    proc = subprocess.run(resolve + [*cuda_base, "fallback"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == cuda_base[1], proc.stderr
    assert f"the default base {cuda_base[0]} cannot be pulled" in proc.stderr
    # a base the user names must be there: one line, non-zero, nothing built
    proc = make("image", "BASE_IMAGE=registry.invalid/cuda:1")
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[0].startswith(
        "image: BASE_IMAGE=registry.invalid/cuda:1 is not in the engine and cannot be pulled: "), proc.stderr


@pytest.mark.slow
def test_a_base_without_make_or_venv_gets_them_from_apt(tmp_path):
    """What a CUDA base (Ubuntu, often without make) goes through, on the local base with the
    packages removed; apt needs the network, as on a real build host."""
    require_engine()
    local_base = make("--eval", "pb: ; @echo $(LOCAL_BASE)", "pb").stdout.strip()
    subprocess.run([str(ROOT / "docker" / "resolve-base.sh"), local_base, local_base], check=True, capture_output=True)
    name = f"crygen-test-bare-{os.getpid()}"
    docker("run", "--name", name, local_base, "dpkg", "--remove", "make", "python3-venv", "python3.11-venv")
    try:
        docker("commit", name, f"localhost/{name}:1")
    finally:
        docker("rm", name)
    try:
        script = ROOT / "docker" / "os-packages.sh"
        check = "make --version >/dev/null && python3.11 -m venv /tmp/v && /tmp/v/bin/python -c 'print(1)'"
        before = docker("run", "--rm", f"localhost/{name}:1", "sh", "-c", check, check=False)
        assert before.returncode != 0  # the packages are really gone
        proc = docker("run", "--rm", "--network=host", "-e", "PYTHON=python3.11", "-v", f"{script}:/tmp/os.sh:ro",
                      f"localhost/{name}:1", "sh", "-c", f"/tmp/os.sh > /tmp/apt.log 2>&1 || tail /tmp/apt.log; {check}",
                      check=False)
        assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stdout + proc.stderr
    finally:
        docker("rmi", f"localhost/{name}:1", check=False)


@pytest.mark.slow
def test_pipeline_in_the_image_writes_a_complete_run_folder(tmp_path):
    require_engine()
    image = make("image")
    assert image.returncode == 0, image.stdout[-2000:] + image.stderr[-4000:]
    out = tmp_path / "run"
    proc = make("pipeline", "RUNNER=docker", "EPOCHS=1", "NUM_GEN=2", f"OUT={out}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["generation_eval"]["count"] == 2 and s["generation_eval"]["relaxed"] is True
    assert {"prepare_data", "finetune", "validate", "generate", "evaluate_generated"} <= set(s["provenance"]["stages"])
    assert s["provenance"]["settings"]["OUT"] == str(out)
    for f in ("evaluation/metrics.json", "finetune/DONE.json", "generation/results/generated_crystals.extxyz",
              "generation/results/metrics_summary.json", "generation/results/generated_crystals_cif.zip"):
        assert (out / f).is_file(), f
    assert {p.stat().st_uid for p in out.rglob("*")} == {os.getuid()}  # the caller's files
