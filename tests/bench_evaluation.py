"""Benchmark: crygen's evaluation against MatterGen's ``MetricsEvaluator``, and batched relaxation.

    python tests/bench_evaluation.py [--structures PATH] [--count 256] [--relax-count 32]

* metrics without relaxation: the same structures and reference (crygen's default plus the
  demo crystals as training set) given to ``MetricsEvaluator`` as MatterGen's ``evaluate`` calls
  it, and to ``crygen.evaluation.evaluate``; each in its own process, timing the metric
  computation only (imports and reading the reference excluded); the values must be identical.
  Without ``--structures`` the input is ``--count`` demo crystals, perturbed by 0.05 A, so that
  every structure has same-formula candidates to match (the costly path of novelty);
* relaxation: ``--relax-count`` demo crystals, their volume strained by 5 %, relaxed with
  CHGNet in batches and one at a time (structures per minute).

Results go to stdout and runs/bench/bench_evaluation.json.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def perturbed_demo(count: int, seed: int = 0, strain: float = 0.0) -> list:
    import ase.io
    import numpy as np
    from pymatgen.io.ase import AseAtomsAdaptor

    from crygen.structures import generatable_elements

    allowed = generatable_elements()
    frames = [a for a in ase.io.read(ROOT / "data/alexandria/alexandria-random-1k.xyz", ":") if set(a.numbers) <= allowed]
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(frames))[:count]:
        s = AseAtomsAdaptor.get_structure(frames[i])
        if strain:
            s.scale_lattice(s.volume * (1 + strain))
        else:
            s.perturb(0.05)
        out.append(s)
    return out


def _run_one(which: str, structures_pkl: str, result_json: str) -> None:
    """In a fresh process: load the reference, then time one evaluator."""
    os.environ["TQDM_DISABLE"] = "1"
    import logging

    from crygen.evaluation import evaluate, mattergen_metrics
    from crygen.reference import load_reference, with_training_set
    from crygen.structures import read_entries

    structures = pickle.loads(Path(structures_pkl).read_bytes())
    training = [e.structure for e in read_entries(ROOT / "data/alexandria/alexandria-random-1k.xyz")]
    for i, s in enumerate(training):
        s.properties["material_id"] = f"demo{i}"
    reference = with_training_set(load_reference("default")[0], training)
    list(reference)  # read every entry before the clock starts
    logging.getLogger("MatterGen").setLevel(logging.ERROR)
    start = time.perf_counter()
    metrics = evaluate(structures, reference).metrics if which == "crygen" else mattergen_metrics(structures, reference)
    Path(result_json).write_text(json.dumps({"seconds": time.perf_counter() - start, "metrics": metrics}))


def bench_metrics(structures: list) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "s.pkl"
        pkl.write_bytes(pickle.dumps(structures))
        runs = {}
        for which in ("mattergen", "crygen"):
            res = Path(tmp) / f"{which}.json"
            subprocess.run([sys.executable, __file__, "--one", which, str(pkl), str(res)], check=True)
            runs[which] = json.loads(res.read_text())
    mg, cg = runs["mattergen"], runs["crygen"]
    return {
        "structures": len(structures),
        "mattergen_s": round(mg["seconds"], 2),
        "crygen_s": round(cg["seconds"], 2),
        "mattergen_per_min": round(60 * len(structures) / mg["seconds"], 1),
        "crygen_per_min": round(60 * len(structures) / cg["seconds"], 1),
        "speedup": round(mg["seconds"] / cg["seconds"], 2),
        "identical_values": mg["metrics"] == cg["metrics"],
        "metrics": cg["metrics"],
    }


def bench_relaxation(count: int) -> dict:
    from crygen.relaxation import load_potential, relax

    structures = perturbed_demo(count, seed=1, strain=0.05)
    potential = load_potential("chgnet")
    out = {"structures": count, "atoms": sum(len(s) for s in structures)}
    for name, batch in (("batched", 512), ("one_at_a_time", 0)):
        start = time.perf_counter()
        results = relax(structures, potential, max_atoms_per_batch=batch)
        seconds = time.perf_counter() - start
        out[name] = {"seconds": round(seconds, 1), "per_min": round(60 * count / seconds, 1),
                     "steps": sum(r.steps for r in results), "converged": sum(r.converged for r in results)}
    out["speedup"] = round(out["one_at_a_time"]["seconds"] / out["batched"]["seconds"], 2)
    return out


@click.command()
@click.option("--structures", "structures_path", default=None, type=click.Path(path_type=Path))
@click.option("--count", default=256, show_default=True)
@click.option("--relax-count", default=32, show_default=True)
@click.option("--one", nargs=3, default=None, hidden=True)
def main(structures_path, count, relax_count, one):
    if one:
        return _run_one(*one)
    from crygen.structures import read_structures

    structures = read_structures(structures_path) if structures_path else perturbed_demo(count)
    results = {"cpu_count": os.cpu_count(), "metrics_without_relaxation": bench_metrics(structures)}
    print(json.dumps(results, indent=2), flush=True)
    if relax_count:
        results["relaxation"] = bench_relaxation(relax_count)
    out = ROOT / "runs" / "bench" / "bench_evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
