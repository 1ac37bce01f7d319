"""Issue 18's figures: parallel efficiency of SHARDS=2 against SHARDS=1 (generation and
relaxation separately), and the cost of writing generation block by block against one write
at the end (the project as it was before blocks, from a git revision). Not a test: run it on
a quiet machine, read its JSON.

    python benchmarks/bench_shards.py [--num-gen 64] [--block 32] [--part-size 8] [--repeats 2] [--old-rev 51affce]
                                      [--skip generation|relaxation|writing ...]

Every configuration runs once per round, in alternating order from round to round (this
machine's speed drifts by 20 % within minutes); the best of the rounds is reported.

* generation: the embedded model's ``stages/generate.py`` (its 250 steps), NUM_GEN crystals in
  blocks of --block: SHARDS=1 THREADS=1, SHARDS=2 THREADS=1, and SHARDS=1 with every core.
  Efficiency = T(1 process) / (2 x T(2 processes)), same threads per process;
* relaxation: ``stages/evaluate_generated.py`` on those crystals, SHARDS=1 against SHARDS=2
  (THREADS=1 each), the same way;
* block writing: --old-rev's ``stages/generate.py`` (one write at the end) against this one
  (a block per batch), one block of NUM_GEN, default threads; plus the per-block costs the
  blocks record, for the projection to a campaign.

Results go to stdout and to runs/bench/shards.json.
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
MODEL = ROOT / "data" / "base_model"


def _run(cmd: list[str], cwd: Path = ROOT, pythonpath: Path = ROOT) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    env.pop("CRYGEN_LOG_DIR", None)
    env.pop("CRYGEN_TIMINGS_DIR", None)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


# per writing run: the whole stage's seconds less its sampling's (generation.json), by tree
OUTSIDE_SAMPLING: dict[str, list[float]] = {"old": [], "new": []}


def generate(out: Path, num_gen: int, block: int, shards: int, threads: int, root: Path = ROOT) -> float:
    seconds = _generate(out, num_gen, block, shards, threads, root)
    if out.name in OUTSIDE_SAMPLING:
        sampling = json.loads((out / "results" / "generation.json").read_text())["sampling_seconds"]
        OUTSIDE_SAMPLING[out.name].append(round(seconds - sampling, 2))
    return seconds


def _generate(out: Path, num_gen: int, block: int, shards: int, threads: int, root: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    args = ["--model", str(MODEL), "--out", str(out / "results"), "--num-gen", str(num_gen), "--seed", "42"]
    if root == ROOT:
        args += ["--batch-size", str(block), "--shards", str(shards), "--threads", str(threads)]
    else:  # the project before blocks: one process, torch's own threads
        args += ["--batch-size", str(block)]
    return _run([sys.executable, str(root / "stages" / "generate.py"), *args], cwd=root, pythonpath=root)


def relax(results: Path, out: Path, shards: int, part_size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return _run([sys.executable, str(ROOT / "stages" / "evaluate_generated.py"), "--results", str(results),
                 "--out", str(out), "--relax", "--shards", str(shards), "--threads", "1", "--part-size", str(part_size)])


def _rounds(configs: dict, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(round(configs[name](), 1))
            print(f"{name}: {times[name][-1]} s", file=sys.stderr, flush=True)
    return times


def _old_tree(rev: str, tmp: Path) -> Path:
    tree = tmp / "old"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    return tree


def _writing(work: Path, num_gen: int, old_rev: str, repeats: int) -> dict:
    """One block of NUM_GEN written as drawn (this tree) against one write at the end (old_rev)."""
    with tempfile.TemporaryDirectory(prefix="crygen-bench-") as tmp:
        old = _old_tree(old_rev, Path(tmp))
        try:
            writes = _rounds({
                "one write at the end": lambda: generate(work / "old", num_gen, num_gen, 1, 0, root=old),
                "block by block": lambda: generate(work / "new", num_gen, num_gen, 1, 0),
            }, repeats)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    return {"runs_s_writing": writes, "outside_sampling_s": OUTSIDE_SAMPLING,
            "block_writing_overhead": round(min(writes["block by block"]) / min(writes["one write at the end"]) - 1, 4),
            # the stage's time outside sampling, which is where writing is: free of the sampling's drift
            "block_writing_overhead_outside_sampling_s": round(
                min(OUTSIDE_SAMPLING["new"]) - min(OUTSIDE_SAMPLING["old"]), 2)}


@click.command()
@click.option("--num-gen", default=64, show_default=True)
@click.option("--block", default=32, show_default=True, help="Block size for the shards' comparison.")
@click.option("--part-size", default=8, show_default=True, help="Relaxation part size (parts are what the shards split).")
@click.option("--repeats", default=2, show_default=True)
@click.option("--old-rev", default="51affce", show_default=True, help="A revision without generation blocks.")
@click.option("--skip", multiple=True, type=click.Choice(["generation", "relaxation", "writing"]),
              help="Leave a part out (relaxation needs generation's crystals).")
def main(num_gen: int, block: int, part_size: int, repeats: int, old_rev: str, skip: tuple[str, ...]):
    work = ROOT / "runs" / "bench" / "shards"
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"num_gen": num_gen, "block": block, "part_size": part_size, "cores": os.cpu_count(), "runs_s": {}}
    if "generation" not in skip:
        gen = _rounds({
            "1 process, 1 thread": lambda: generate(work / "g1", num_gen, block, 1, 1),
            "2 processes, 1 thread each": lambda: generate(work / "g2", num_gen, block, 2, 1),
            "1 process, every core": lambda: generate(work / "gall", num_gen, block, 1, 0),
        }, repeats)
        best = {k: min(v) for k, v in gen.items()}
        blocks = json.loads((work / "g2" / "results" / "generation.json").read_text())["blocks"]["blocks"]
        report["runs_s"].update(gen)
        report.update({
            "generation_efficiency": round(best["1 process, 1 thread"] / (2 * best["2 processes, 1 thread each"]), 3),
            "generation_speedup_over_every_core": round(best["1 process, every core"] / best["2 processes, 1 thread each"], 3),
            "sampling_seconds_per_block": [b["seconds"] for b in blocks],
        })
    if "relaxation" not in skip:
        results = work / "g1" / "results"
        rel = _rounds({
            "1 process": lambda: relax(results, work / "r1", 1, part_size),
            "2 processes": lambda: relax(results, work / "r2", 2, part_size),
        }, repeats)
        report["runs_s"].update(rel)
        report["relaxation_efficiency"] = round(min(rel["1 process"]) / (2 * min(rel["2 processes"])), 3)
    if "writing" not in skip:
        report.update(_writing(work, num_gen, old_rev, repeats))
    (work.parent / "shards.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
