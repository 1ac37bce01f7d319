"""DEVICE=cuda at MatterGen's real size, wherever a GPU exists: fine-tune, validate and sample
on the GPU; the automatic batch within the GPU memory it budgets; crygen's radius graph
bit-identical to MatterGen's on GPU tensors. Each runs in a subprocess that sees the GPUs
(the test process itself is CPU-only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, cuda_available, gpu_env, run_stage, subprocess_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cuda_available(), reason="no CUDA device on this machine (CI and the developers' "
                                                    "machines have none); these run wherever torch sees a GPU"),
]


def run_python(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env({**gpu_env(), "PYTHONPATH": str(ROOT)}), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_real_size_finetunes_validates_and_samples_on_cuda(published, real_size_model, small_dataset, tmp_path):
    base = published("mattergen_base")
    ft = tmp_path / "ft"
    run_stage("finetune", "--base-model", base, "--data", small_dataset, "--out", ft, "--max-steps", 2,
              "--batch-size", 8, "--device", "cuda", env=gpu_env())
    assert json.loads((ft / "DONE.json").read_text())["device"] == "cuda"
    run_stage("validate", "--base-model", base, "--finetuned-model", ft, "--data", small_dataset,
              "--out", tmp_path / "metrics.json", "--draws", 1, "--device", "cuda", env=gpu_env())
    out = tmp_path / "results"
    run_stage("generate", "--model", real_size_model, "--out", out, "--num-gen", 16, "--device", "cuda",
              "--no-trajectories", env=gpu_env())
    generation = json.loads((out / "generation.json").read_text())
    assert generation["device"] == "cuda" and generation["samples"]["drawn"] == 16
    assert generation["batch_size"] == 16 and generation["samples"]["failed_batches"] == []


AUTO_BATCH_PROBE = """
import json, sys
from pathlib import Path
import torch
from crygen import mattergen as mc
from crygen.generation import auto_batch_size, generate, structure_memory_mb
model = Path(sys.argv[1])
config = mc.load_model_config(model)
batch = min(auto_batch_size(10_000, config, "cuda"), 512)
torch.cuda.reset_peak_memory_stats()
before = torch.cuda.memory_allocated()
r = generate(model, batch, seed=0, device="cuda", batch_size=batch, record_trajectories=False, log=lambda m: None)
peak = (torch.cuda.max_memory_allocated() - before) / 2**20
print(json.dumps({"batch": batch, "n": len(r.structures), "mb_per_structure": peak / batch,
                  "budget_mb": structure_memory_mb(config)}))
"""


def test_automatic_batch_stays_within_its_gpu_budget(real_size_model):
    result = run_python(AUTO_BATCH_PROBE, real_size_model)
    print(result)
    assert result["n"] == result["batch"] > 1
    assert result["mb_per_structure"] <= result["budget_mb"]


RADIUS_GRAPH_PROBE = """
import json, sys
from pathlib import Path
import torch
from mattergen.common.utils import data_utils
from crygen import generation
from crygen.mattergen import speedups as mc
calls = []
original = data_utils.radius_graph_pbc_ocp
mc.SAMPLING = ()  # MatterGen's own radius graph while generate samples; crygen's compared below
def spy(*args, **kwargs):
    calls.append(kwargs)
    return original(*args, **kwargs)
data_utils.radius_graph_pbc_ocp = spy
generation.generate(Path(sys.argv[1]), 8, seed=3, device="cuda", batch_size=8, record_trajectories=False,
                    log=lambda m: None)
data_utils.radius_graph_pbc_ocp = original
equal = all(torch.equal(e, g) for kwargs in calls
            for e, g in zip(original(**kwargs), mc.radius_graph_pbc_ocp_per_pair_images(**kwargs)))
print(json.dumps({"calls": len(calls), "device": str(calls[0]["pos"].device), "equal": equal}))
"""


def test_per_pair_radius_graph_equals_mattergens_on_cuda(real_size_model):
    result = run_python(RADIUS_GRAPH_PROBE, real_size_model)
    assert result["device"].startswith("cuda") and result["calls"] == 20
    assert result["equal"]
