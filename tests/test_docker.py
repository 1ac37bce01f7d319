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
    return subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


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


@pytest.mark.slow
def test_pipeline_in_the_image_writes_a_complete_run_folder(tmp_path):
    if os.environ.get("CRYGEN_DOCKER_TESTS") != "1":
        pytest.skip("builds and runs the image: CRYGEN_DOCKER_TESTS=1 and an engine (.ci/run has both)")
    assert engine_reachable(), "CRYGEN_DOCKER_TESTS=1 but no container engine is reachable (DOCKER_HOST)"
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
