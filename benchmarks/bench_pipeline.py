"""Benchmarks for the figures the issues ask for (not a test: run it, read its JSON).

    python benchmarks/bench_pipeline.py [--setup cold|warm|none] [--num-gen-throughput 64] [--repeats 2] [--seeds 3]

* set-up: ``make setup`` into a fresh venv of a fresh clone, with an empty pip cache
  (cold: downloads everything; nothing is compiled any more) or the user's (warm), then
  ``make pipeline EPOCHS=1 NUM_GEN=4`` in that clone (clone to finished pipeline, the clone
  not counted);
* ``make pipeline EPOCHS=1 NUM_GEN=4`` in a fresh run folder: wall time and peak RSS of
  every stage (from the stages' own timing records) and the whole;
* generation throughput at the automatic batch size against the old fixed batch of 4,
  alternating runs of each, over several seeds (the atoms a seed draws set a batch's cost).

Results go to stdout and to runs/bench/bench.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import run_generation_probe  # noqa: E402  (crygen's generation in a process of its own)


def time_setup(mode: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="crygen-setup-") as tmp:
        clone = Path(tmp) / "crygen"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = dict(os.environ)
        if mode == "cold":
            env["PIP_CACHE_DIR"] = str(Path(tmp) / "pip-cache")
        start = time.time()
        subprocess.run(["make", "-C", str(clone), "setup"], check=True, env=env)
        setup_s = time.time() - start
        # then what a new user runs next, in the same clone: set-up done, the data fetched, the pipeline
        subprocess.run(["make", "-C", str(clone), "pipeline", "EPOCHS=1", "NUM_GEN=4"], check=True, env=env)
        total_s = time.time() - start
        return {"mode": mode, "wall_s": round(setup_s, 1), "clone_to_finished_pipeline_s": round(total_s, 1)}


def time_pipeline(out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    subprocess.run(["make", "-C", str(ROOT), "pipeline", "EPOCHS=1", "NUM_GEN=4", f"OUT={out}"], check=True)
    total = time.time() - start
    stages = {}
    for f in sorted((out / "timings").glob("*.json")):
        t = json.loads(f.read_text())
        stages[t["stage"]] = {"wall_s": t["wall_s"], "peak_rss_mb": t["peak_rss_mb"]}
    start = time.time()
    subprocess.run(["make", "-C", str(ROOT), "pipeline", "EPOCHS=1", "NUM_GEN=4", f"OUT={out}"], check=True,
                   capture_output=True)
    return {"total_wall_s": round(total, 1), "second_run_wall_s": round(time.time() - start, 2), "stages": stages}


def time_generation(model_dir: Path, num_gen: int, repeats: int, seeds: int) -> dict:
    """Each run in its own process, so peak memory is its own; the automatic and the fixed batch
    alternate, so a machine whose speed drifts (shared hosts do, by 20 %) slows both alike.

    Over ``seeds`` seeds: a batch's cost follows the atoms its crystals drew, which vary from
    seed to seed (the README gives the range); the batch of 4 draws 16 batches, so varies less.
    The atoms each run wrote are reported beside its time."""
    from crygen.generation import auto_batch_size
    from crygen.mattergen.model_dir import load_model_config

    auto = auto_batch_size(num_gen, load_model_config(model_dir), "cpu")
    batches = {"auto": auto, "fixed_4": 4}
    runs = {label: [] for label in batches}
    for _ in range(repeats):
        for seed in range(seeds):
            for label, batch in batches.items():
                runs[label].append(dict(run_generation_probe(model_dir, num_gen, batch, seed=seed), seed=seed))
    rows = {}
    for label, batch in batches.items():
        seconds = [r["seconds"] for r in runs[label]]
        rows[label] = {"batch_size": batch, "seeds": [r["seed"] for r in runs[label]],
                       "seconds": [round(x, 1) for x in seconds], "atoms": [r["atoms"] for r in runs[label]],
                       "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs[label])),
                       "structures_per_minute": round(sum(r["n"] for r in runs[label]) / sum(seconds) * 60, 2),
                       "atoms_per_second": round(sum(r["atoms"] for r in runs[label]) / sum(seconds), 2)}
    rows["speedup"] = round(rows["auto"]["structures_per_minute"] / rows["fixed_4"]["structures_per_minute"], 2)
    rows["speedup_per_pair"] = [round(f / a, 2) for a, f in zip(rows["auto"]["seconds"], rows["fixed_4"]["seconds"])]
    rows["speedup_in_atoms_per_second"] = round(rows["auto"]["atoms_per_second"] / rows["fixed_4"]["atoms_per_second"],
                                                2)
    if auto > 4:
        rows["rss_mb_per_structure"] = round(
            (rows["auto"]["peak_rss_mb"] - rows["fixed_4"]["peak_rss_mb"]) / (auto - 4), 2)
    return rows


@click.command()
@click.option("--setup", "setup_mode", type=click.Choice(["cold", "warm", "none"]), default="none")
@click.option("--pipeline/--no-pipeline", default=True)
@click.option("--num-gen-throughput", default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="alternating runs of each batch size, per seed")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="generation seeds 0..N-1, each drawn at both batch sizes")
def main(setup_mode: str, pipeline: bool, num_gen_throughput: int, repeats: int, seeds: int) -> None:
    out = ROOT / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    results = {"cpu_count": os.cpu_count()}
    if setup_mode != "none":
        results["setup"] = time_setup(setup_mode)
    if pipeline:
        results["pipeline"] = time_pipeline(out / "pipeline")
        model = out / "pipeline" / "generation" / "model_for_generation"
    else:
        model = ROOT / "data" / "base_model"
    if num_gen_throughput:
        results["generation_throughput"] = time_generation(model, num_gen_throughput, repeats, seeds)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
