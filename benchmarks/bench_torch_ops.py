"""Issue 19's figures: sampling and training with crygen's plain-PyTorch torch_scatter/torch_sparse
operations against the compiled packages. Not a test; needs the compiled ones (make
setup-compiled-ops).

    python benchmarks/bench_torch_ops.py [--num 64] [--repeats 2] [--threads 1] [--train-steps 60]

Each run is a fresh process sampling ``--num`` crystals in one batch from the embedded model
(its 250 steps, crygen's speed-ups on), with the compiled packages importable ("compiled") or
hidden from the import system, so that crygen's provided modules serve MatterGen ("plain").
Alternating order, best of the rounds; the crystals of the two must be equal. Training: the
same alternation of fresh processes running ``stages/finetune.py`` on the demo crystals
(prepared once, as ``make pipeline`` prepares them) for ``--train-steps`` steps of batch 32,
timed whole and per step (between the stage's first and last progress lines, in tenths of a
second). ``--num 0``: training only. Results go to stdout and runs/bench/torch_ops.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import WITHOUT_COMPILED_OPS  # noqa: E402

RUN = WITHOUT_COMPILED_OPS + """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[4]))
from crygen import provided_modules
from crygen.generation import generate
result = generate(Path(sys.argv[1]), int(sys.argv[3]), seed=777, batch_size=int(sys.argv[3]),
                  record_trajectories=False, log=lambda m: None)
assert provided_modules.provided("torch_scatter") == (sys.argv[2] == "plain")
print(json.dumps({"seconds": result.seconds, "crystals": [s.as_dict() for s in result.structures]}))
"""

# a stage run as its own script would run, after the import system's change above
STAGE = WITHOUT_COMPILED_OPS + """
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def ops_env(how: str) -> dict[str, str]:
    """The environment of a fresh process with the compiled ops importable ("compiled") or hidden ("plain")."""
    return {**os.environ, "HIDE_COMPILED_OPS": "1" if how == "plain" else "0"}


def time_training(how: str, data: Path, work: Path, steps: int) -> tuple[float, float]:
    """A whole ``stages/finetune.py`` process, ``how``: compiled or plain: its seconds, and the
    seconds per training step between its first and last progress lines (start-up left out)."""
    out = work / f"finetune_{how}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STAGE, str(ROOT / "stages" / "finetune.py"), "--base-model",
                           str(ROOT / "data" / "base_model"), "--data", str(data), "--out", str(out), "--epochs", "100",
                           "--max-steps", str(steps), "--device", "cpu"], capture_output=True, text=True, check=True,
                          cwd=ROOT, env={**ops_env(how), "CRYGEN_LOG_DIR": ""})
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    # "finetune: epoch 2 step 48/60 loss 6.793 (13.4 s)", five lines a run (--epochs only bounds it:
    # --max-steps ends it, so that steps, not the 24 of one demo epoch, decide what is timed; the
    # epoch ends between, with their checkpoints, fall in both arms alike)
    progress = [(int(m[1]), float(m[2])) for m in re.finditer(r"step (\d+)/\d+ .*\(([\d.]+) s\)", proc.stdout + proc.stderr)]
    (step_0, t_0), (step_1, t_1) = progress[0], progress[-1]
    return seconds, (t_1 - t_0) / (step_1 - step_0)


@click.command()
@click.option("--num", default=64, show_default=True)
@click.option("--repeats", default=2, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--train-steps", default=60, show_default=True, help="0: no training runs")
def main(num: int, repeats: int, threads: int, train_steps: int):
    times: dict[str, list[float]] = {"compiled": [], "plain": []}
    training: dict[str, list[float]] = {"compiled": [], "plain": []}
    per_step: dict[str, list[float]] = {"compiled": [], "plain": []}
    crystals = {}
    work = Path(tempfile.mkdtemp(prefix="bench_torch_ops_"))
    try:
        data = work / "data"
        if train_steps:
            subprocess.run([sys.executable, str(ROOT / "stages" / "prepare_data.py"), "--input",
                            str(ROOT / "data" / "alexandria" / "alexandria-random-1k.xyz"), "--out", str(data)],
                           capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "CRYGEN_LOG_DIR": ""})
        for r in range(repeats):
            for how in (("compiled", "plain") if r % 2 == 0 else ("plain", "compiled")):
                if num:
                    proc = subprocess.run([sys.executable, "-c", RUN, str(ROOT / "data" / "base_model"), how, str(num),
                                           str(threads)], capture_output=True, text=True, check=True, cwd=ROOT,
                                          env=ops_env(how))
                    out = json.loads(proc.stdout.strip().splitlines()[-1])
                    times[how].append(round(out["seconds"], 1))
                    crystals[how] = out["crystals"]
                    print(f"{how}: {times[how][-1]} s sampling", file=sys.stderr, flush=True)
                if train_steps:
                    process_s, step_s = time_training(how, data, work, train_steps)
                    training[how].append(round(process_s, 1))
                    per_step[how].append(round(step_s, 3))
                    print(f"{how}: {training[how][-1]} s training process, {per_step[how][-1]} s per step",
                          file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"num": num, "threads": threads}
    if num:
        report.update({"sampling_s": times, "plain_over_compiled": round(min(times["plain"]) / min(times["compiled"]), 3),
                       "same_crystals": crystals["plain"] == crystals["compiled"]})
    if train_steps:
        report.update({"train_steps": train_steps, "training_process_s": training, "training_step_s": per_step,
                       "training_process_plain_over_compiled": round(min(training["plain"]) / min(training["compiled"]), 3),
                       "training_step_plain_over_compiled": round(min(per_step["plain"]) / min(per_step["compiled"]), 3)})
    out = ROOT / "runs" / "bench" / "torch_ops.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
