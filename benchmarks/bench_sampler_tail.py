"""Issue 19's slow tail: what grows in the late steps of a 64-crystal batch. Not a test.

    python benchmarks/bench_sampler_tail.py [--num 64] [--seed 777] [--threads 0]

Samples one batch from the embedded model as ``crygen.generation`` does (its speed-ups on) and
records, at every model call, the seconds since the previous call, the graph's edges, the
periodic images per direction the batch needs (``max_rep``: the radius graph's image box) and
the batch's thinnest cell (smallest spacing of lattice planes, in A) and smallest volume per
atom. Writes runs/bench/sampler_tail.json and prints the steps of the last 10 % beside the
median.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


@click.command()
@click.option("--num", default=64, show_default=True)
@click.option("--seed", default=777, show_default=True)
@click.option("--threads", default=0, show_default=True, help="0: torch's default.")
def main(num: int, seed: int, threads: int):
    import torch

    from crygen import patches
    from crygen.generation import _batch_conditions, batch_seed, prepare_sampling
    from crygen.mattergen import speedups
    from crygen.mattergen.model_dir import ModelDir

    if threads:
        torch.set_num_threads(threads)
    calls: list[dict] = []
    original = speedups.radius_graph_pbc_ocp_per_pair_images
    last = [time.perf_counter()]

    def recorded(pos, pbc, natoms, cell, radius, max_num_neighbors_threshold, max_cell_images_per_dim=None):
        out = original(pos, pbc, natoms, cell, radius, max_num_neighbors_threshold, max_cell_images_per_dim)
        _, max_rep = speedups._images_per_direction(cell, radius, max_cell_images_per_dim or 10**9)
        volume = torch.linalg.det(cell).abs()
        cross = torch.linalg.cross(cell[:, [1, 2, 0]], cell[:, [2, 0, 1]], dim=-1).norm(dim=-1)  # (B, 3)
        spacing = volume[:, None] / cross
        now = time.perf_counter()
        calls.append({"seconds": round(now - last[0], 4), "edges": int(out[0].shape[1]),
                      "max_rep": [int(x) for x in max_rep], "thinnest_cell_A": round(float(spacing.min()), 3),
                      "min_volume_per_atom": round(float((volume / natoms).min()), 3)})
        last[0] = now
        return out

    speedups.radius_graph_pbc_ocp_per_pair_images = recorded  # crygen's own function, read when the patch applies
    run = prepare_sampling(ModelDir(ROOT / "data" / "base_model", verify=True), "cpu", 0.0)
    conditioning, mask = _batch_conditions(run, num, batch_seed(seed, 1, 0), None)
    start = time.perf_counter()
    with patches.applied(*speedups.SAMPLING):
        last[0] = time.perf_counter()
        run.sampler.sample(conditioning, mask)
    total = time.perf_counter() - start
    median = statistics.median(c["seconds"] for c in calls)
    tail = calls[int(0.9 * len(calls)):]
    report = {"num": num, "seed": seed, "threads": torch.get_num_threads(), "total_s": round(total, 1),
              "median_call_s": round(median, 4), "slowest_tail_call_over_median": round(
                  max(c["seconds"] for c in tail) / median, 2), "calls": calls}
    out = ROOT / "runs" / "bench" / "sampler_tail.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(calls)} model calls in {total:.1f} s; median {median:.3f} s; last 10 %:")
    for i, c in enumerate(tail, len(calls) - len(tail)):
        print(i, c)


if __name__ == "__main__":
    main()
