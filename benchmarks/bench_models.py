"""Real-size figures (issue 14): MatterGen's mattergen_base (its published config.yaml, random
weights: 44.6 M parameters) beside crygen's embedded model, on this machine.

    python benchmarks/bench_models.py [--models real,embedded] [--sample-steps 20] [--full-sample/--no-full-sample]

For each model, each figure measured in a process of its own (so peak memory is its own):

* fine-tune: seconds per optimiser step at batch 8 (MatterGen's loss, backward, value clipping
  at 0.5, Adam; the median of --train-steps after one warm-up step) and peak RSS;
* sampling at the automatic batch (crygen.generation.auto_batch_size for --num-gen): seconds
  per sampler step over --sample-steps steps of crygen's sampler (corrector + predictor, with
  crygen's speed-ups), extrapolated to seconds per crystal for the model's full schedule
  (1000 steps for MatterGen's models, 250 for the embedded one), and peak RSS;
* with --full-sample: one crystal through the whole 1000-step schedule of the real-size
  model, timed end to end (no extrapolation).

Random weights cannot denoise (tests/helpers.py says why), so the real-size model samples with
its cell-score layers at a trained model's magnitude and from t=0.5 of its schedule: the
per-step cost is that of cells at the prior's density, as a trained model's are. Results go
to stdout and to runs/bench/models.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_PROBE = """
import json, resource, statistics, sys, time
import torch
from hydra.utils import instantiate
from crygen import mattergen as mc
model_dir, data, batch, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
config = mc.load_model_config(model_dir)
mc.register_properties(mc.model_properties(config))
module = instantiate(config["lightning_module"])
module.load_state_dict(mc.read_checkpoint(f"{model_dir}/checkpoints/last.ckpt")["state_dict"])
module.train()
loader = instantiate(mc.data_module_config(data, batch_size=batch))
loader.setup("fit")
batches = iter(loader.train_dataloader())
optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
times = []
for i in range(steps + 1):
    x = next(batches)
    start = time.perf_counter()
    loss, _ = module.diffusion_module.calc_loss(x)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(module.parameters(), 0.5)
    optimizer.step()
    if i:  # the first step warms caches and allocator up
        times.append(time.perf_counter() - start)
print(json.dumps({"batch_size": batch, "steps": steps, "seconds_per_step": statistics.median(times),
                  "parameters": sum(p.numel() for p in module.parameters()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PROBE_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def probe(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=PROBE_ENV)
    if proc.returncode:
        raise SystemExit(f"probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sample(model_dir: Path, batch: int) -> dict:
    """``batch`` crystals in one batch, in a process of its own (tests/helpers.py's probe)."""
    from tests.helpers import run_generation_probe

    return run_generation_probe(model_dir, batch, batch, env=PROBE_ENV)


def models(tmp: Path, which: list[str]) -> dict:
    """name -> (model dir, its own schedule's step count, sampling start time)."""
    from crygen import mattergen as mc
    from tests.helpers import BASE_MODEL, SAMPLEABLE_CELL_SCORE_SCALE, published_model_dir

    out = {}
    if "real" in which:
        real = published_model_dir("mattergen_base", tmp / "mattergen_base", cell_score_scale=SAMPLEABLE_CELL_SCORE_SCALE)
        out["real"] = (real, mc.diffusion_steps(mc.load_model_config(real)), 0.5)
    if "embedded" in which:
        out["embedded"] = (BASE_MODEL, mc.diffusion_steps(mc.load_model_config(BASE_MODEL)), None)
    return out


def dataset(tmp: Path) -> Path:
    from tests.helpers import demo_subset

    data = tmp / "data"
    subprocess.run([sys.executable, str(ROOT / "stages" / "prepare_data.py"), "--input",
                    demo_subset(tmp / "demo.extxyz", 120), "--out", data, "--seed", "1"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return data


@click.command()
@click.option("--models", "which", default="real,embedded", show_default=True)
@click.option("--train-steps", default=5, show_default=True)
@click.option("--num-gen", default=64, show_default=True, help="NUM_GEN the automatic batch is sized for.")
@click.option("--sample-steps", default=20, show_default=True)
@click.option("--full-sample/--no-full-sample", default=True, show_default=True)
def main(which: str, train_steps: int, num_gen: int, sample_steps: int, full_sample: bool) -> None:
    from crygen import mattergen as mc
    from crygen.generation import auto_batch_size
    from tests.helpers import with_diffusion_steps

    results = {"cpu_count": os.cpu_count(), "torch_threads": None}
    with tempfile.TemporaryDirectory(prefix="crygen-bench-") as tmp:
        tmp = Path(tmp)
        data = dataset(tmp)
        for name, (model, schedule, start) in models(tmp, which.split(",")).items():
            row = {"diffusion_steps": schedule}
            row["finetune"] = probe(TRAIN_PROBE, model, data, 8, train_steps)
            batch = auto_batch_size(num_gen, mc.load_model_config(model), "cpu")
            short = with_diffusion_steps(model, tmp / f"{name}-short", sample_steps, start_time=start)
            run = sample(short, batch)
            per_step = run["seconds"] / sample_steps
            row["sampling"] = {"num_gen": num_gen, "automatic_batch": batch, "steps_timed": sample_steps,
                               "seconds_per_step": round(per_step, 3),
                               "seconds_per_crystal_full_schedule": round(per_step * schedule / batch, 2),
                               "peak_rss_mb": round(run["peak_rss_mb"]), "failed_batches": run["failed_batches"]}
            if full_sample and name == "real":
                whole = with_diffusion_steps(model, tmp / f"{name}-whole", schedule, start_time=start)
                run = sample(whole, 1)
                row["one_crystal_full_schedule"] = {"seconds": round(run["seconds"], 1),
                                                    "peak_rss_mb": round(run["peak_rss_mb"]),
                                                    "failed_batches": run["failed_batches"]}
            results[name] = row
            print(json.dumps({name: row}), flush=True)
    import torch

    results["torch_threads"] = torch.get_num_threads()
    out = ROOT / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
