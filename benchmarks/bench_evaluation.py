"""Benchmark: crygen's evaluation against MatterGen's ``MetricsEvaluator``, and batched relaxation.

    python benchmarks/bench_evaluation.py [--structures PATH | --input perturbed|near-misses] [--count 256]
        [--repeat 3] [--mattergen-blas-threads N] [--relax-count 32]

* metrics without relaxation: the same structures and reference (crygen's default plus the
  demo crystals as training set) given to ``MetricsEvaluator`` as MatterGen's ``evaluate`` calls
  it, and to ``crygen.evaluation.evaluate``; each in its own process, timing the metric
  computation only (imports and reading the reference excluded), ``--repeat`` times each,
  alternating; the values must be identical. crygen's first run starts with an empty store of
  reduced reference forms (``speedup_cold``), the later ones find it filled (``speedup``). Wall
  and CPU times are reported with the machine's load. Without ``--structures`` the input is
  ``--count`` demo crystals, either perturbed by 0.05 A (``perturbed``: each matches its
  reference twins) or changed around the matcher's tolerances (``near-misses``: matches,
  rejections and the disordered fallback);
* relaxation: ``--relax-count`` demo crystals, their volume strained by 5 %, or the structures of
  ``--relax-structures`` (generated crystals, as the issue measures), relaxed with CHGNet in
  batches and one at a time (structures per minute, steps, converged, energies compared);
  ``--relax-only`` skips the metrics.

Results go to stdout and runs/bench/bench_evaluation.json.
"""

from __future__ import annotations

import contextlib
import importlib
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


def demo_crystals(count: int, seed: int = 0) -> list:
    """``count`` generatable demo crystals in a seeded random order, as pymatgen Structures."""
    import ase.io
    import numpy as np
    from pymatgen.io.ase import AseAtomsAdaptor

    from crygen.structures import generatable_elements

    allowed = generatable_elements()
    frames = [a for a in ase.io.read(ROOT / "data/alexandria/alexandria-random-1k.xyz", ":") if set(a.numbers) <= allowed]
    rng = np.random.default_rng(seed)
    return [AseAtomsAdaptor.get_structure(frames[i]) for i in rng.permutation(len(frames))[:count]]


def perturbed_demo(count: int, seed: int = 0, strain: float = 0.0) -> list:
    out = demo_crystals(count, seed)
    for s in out:
        if strain:
            s.scale_lattice(s.volume * (1 + strain))
        else:
            s.perturb(0.05)
    return out


def near_misses(count: int, seed: int = 0) -> list:
    """``count`` demo crystals each changed one way around MatterGen's matcher tolerances: moved
    within or beyond stol (0.3 of (V/atom)^(1/3)), strained along a within or beyond ltol (0.2),
    doubled with two different atoms trading sites (another ordering of the same formula: the
    ordered match fails, the disordered one is tried). The reference holds every original (as
    training set) and its relaxed twin: matches, near-misses and the fallback, as in real use."""
    import numpy as np

    out = []
    for i, s in enumerate(demo_crystals(count, seed)):
        kind = i % 5
        np.random.seed(seed + i)  # Structure.perturb draws from numpy's global generator
        scale = (s.volume / len(s)) ** (1 / 3)
        if kind in (0, 1):
            s.perturb((0.1 if kind == 0 else 0.4) * scale)
        elif kind in (2, 3):
            s.apply_strain([0.1 if kind == 2 else 0.3, 0, 0])
        else:
            s = s * (2, 1, 1)
            symbols = [site.specie.symbol for site in s]
            j = next((k for k in range(1, len(s)) if symbols[k] != symbols[0]), None)
            if j is not None:
                a, b = symbols[0], symbols[j]
                s.replace(0, b, s[0].frac_coords)
                s.replace(j, a, s[j].frac_coords)
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
    # before the clock, for both: read every entry, group the training set by formula and system
    # (with_training_set's lookups), and import what both import lazily (pandas among it)
    list(reference)
    reference.entries_by_reduced_formula, reference.entries_by_chemsys
    for module in ("mattergen.evaluation.metrics.energy", "mattergen.evaluation.metrics.evaluator",
                   "mattergen.evaluation.utils.dataset_matcher", "mattergen.evaluation.utils.metrics_structure_summary",
                   "threadpoolctl", "crygen.mattergen.validity"):
        importlib.import_module(module)
    logging.getLogger("MatterGen").setLevel(logging.ERROR)
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = evaluate(structures, reference).metrics if which == "crygen" else mattergen_metrics(structures, reference)
    Path(result_json).write_text(json.dumps({"seconds": time.perf_counter() - start,
                                             "cpu_seconds": time.process_time() - cpu_start, "metrics": metrics}))


def _loadavg() -> str:
    """The machine's load (1, 5, 15 min), recorded with the timings: they mean little without it."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def bench_metrics(structures: list, repeat: int = 1, mattergen_blas_threads: int | None = None) -> dict:
    """Each evaluator ``repeat`` times, alternating (A B B A A B ...) so that a change in the
    machine's load touches both; the best time of each is compared (the least disturbed run),
    crygen's warm runs for ``speedup`` and its first, cold, run for ``speedup_cold``."""
    with tempfile.TemporaryDirectory() as tmp:
        pkl = Path(tmp) / "s.pkl"
        pkl.write_bytes(pickle.dumps(structures))
        # crygen keeps the reference's reduced forms between evaluations (ReducedFormStore): its
        # first run starts from an empty store (cold), the later ones find them there (warm)
        env = {**os.environ, "CRYGEN_REDUCED_FORMS": str(Path(tmp) / "reduced_forms.sqlite")}
        runs: dict[str, list] = {"mattergen": [], "crygen": []}
        loads = [_loadavg()]
        for r in range(repeat):
            for which in (("mattergen", "crygen") if r % 2 == 0 else ("crygen", "mattergen")):
                res = Path(tmp) / f"{which}.json"
                child = dict(env)
                if which == "mattergen" and mattergen_blas_threads:  # crygen's own setting, for comparison
                    child.update(OPENBLAS_NUM_THREADS=str(mattergen_blas_threads), OMP_NUM_THREADS=str(mattergen_blas_threads))
                subprocess.run([sys.executable, __file__, "--one", which, str(pkl), str(res)], check=True, env=child)
                runs[which].append(json.loads(res.read_text()))
                print(f"{which}: {runs[which][-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
            loads.append(_loadavg())
    mg = min(r["seconds"] for r in runs["mattergen"])
    cold = runs["crygen"][0]["seconds"]
    cg = min(r["seconds"] for r in runs["crygen"][1:]) if repeat > 1 else cold
    values = [r["metrics"] for r in runs["mattergen"] + runs["crygen"]]
    return {
        "structures": len(structures),
        "repeat": repeat,
        "mattergen_blas_threads": mattergen_blas_threads or "default",
        "mattergen_s": round(mg, 2),
        "crygen_s": round(cg, 2),
        "crygen_cold_s": round(cold, 2),
        "mattergen_all_s": [round(r["seconds"], 2) for r in runs["mattergen"]],
        "crygen_all_s": [round(r["seconds"], 2) for r in runs["crygen"]],
        # CPU time of the process (all its threads): less disturbed by other work on the machine
        "mattergen_cpu_s": [round(r.get("cpu_seconds", float("nan")), 2) for r in runs["mattergen"]],
        "crygen_cpu_s": [round(r.get("cpu_seconds", float("nan")), 2) for r in runs["crygen"]],
        "mattergen_per_s": round(len(structures) / mg, 1),
        "crygen_per_s": round(len(structures) / cg, 1),
        "speedup": round(mg / cg, 2),
        "speedup_cold": round(mg / cold, 2),
        "identical_values": all(v == values[0] for v in values),
        "loadavg_1_5_15min": loads,
        "metrics": values[-1],
    }


RELAX_VARIANTS = {  # name: (atom budget of a batch, ASE's own ExpCellFilter instead of crygen's)
    "batched": (512, False), "one_at_a_time": (0, False),
    "one_at_a_time_ase_filter": (0, True),  # the old code: one structure per call, SciPy's logm
}


def bench_relaxation(count: int, structures: list | None = None,
                     variants: tuple[str, ...] = ("batched", "one_at_a_time")) -> dict:
    """Relaxation with CHGNet in ``variants`` (:data:`RELAX_VARIANTS`), in that order, with the
    default settings (fmax 0.05 eV/A, 500 steps at most): ``structures`` (generated crystals,
    say) or ``count`` demo crystals strained by 5 %. Energies compared per atom, with the first
    variant, where both converged."""
    from unittest import mock

    import numpy as np
    from ase.filters import ExpCellFilter

    from crygen import relaxation
    from crygen.relaxation import load_potential, relax

    structures = structures if structures is not None else perturbed_demo(count, seed=1, strain=0.05)
    potential = load_potential("chgnet")
    out = {"structures": len(structures), "atoms": sum(len(s) for s in structures)}
    relaxed = {}
    for name in variants:
        batch, ase_filter = RELAX_VARIANTS[name]
        start = time.perf_counter()
        with mock.patch.object(relaxation, "cell_filter_class", lambda: ExpCellFilter) if ase_filter \
                else contextlib.nullcontext():
            results = relaxed[name] = relax(structures, potential, max_atoms_per_batch=batch)
        seconds = time.perf_counter() - start
        out[name] = {"seconds": round(seconds, 1), "per_min": round(60 * len(structures) / seconds, 1),
                     "steps": sum(r.steps for r in results), "converged": sum(r.converged for r in results),
                     "loadavg_after": _loadavg()}
        print(json.dumps({name: out[name]}), flush=True)
    first = variants[0]
    for name in variants[1:]:
        out[f"speedup_{first}_over_{name}"] = round(out[name]["seconds"] / out[first]["seconds"], 2)
        both = [(a.energy / len(a.structure), b.energy / len(b.structure))
                for a, b in zip(relaxed[first], relaxed[name]) if a.converged and b.converged]
        out[f"converged_in_both_{name}"] = len(both)
        if both:
            diff = np.abs(np.subtract(*zip(*both)))
            out[f"energy_difference_ev_per_atom_{name}"] = {"median": float(np.median(diff)), "max": float(diff.max())}
    return out


@click.command()
@click.option("--structures", "structures_path", default=None, type=click.Path(path_type=Path))
@click.option("--count", default=256, show_default=True)
@click.option("--input", "kind", type=click.Choice(["perturbed", "near-misses"]), default="perturbed", show_default=True,
              help="without --structures: demo crystals perturbed by 0.05 A, or changed around the matcher's tolerances")
@click.option("--relax-count", default=32, show_default=True)
@click.option("--relax-structures", default=None, type=click.Path(exists=True, path_type=Path),
              help="relax these (a results folder or structure file) instead of --relax-count demo crystals")
@click.option("--relax-only", is_flag=True, help="skip the metrics benchmark")
@click.option("--relax-variants", default="batched,one_at_a_time", show_default=True,
              help=f"comma-separated, in order, of {', '.join(RELAX_VARIANTS)}")
@click.option("--repeat", default=3, show_default=True, help="runs of each evaluator, alternating")
@click.option("--mattergen-blas-threads", type=int, default=None,
              help="BLAS threads of MatterGen's process (crygen runs its matching on one); default: BLAS's own")
@click.option("--one", nargs=3, default=None, hidden=True)
def main(structures_path, count, kind, relax_count, relax_structures, relax_only, relax_variants, repeat,
         mattergen_blas_threads, one):
    if one:
        return _run_one(*one)
    from crygen.structures import read_structures

    results = {"cpu_count": os.cpu_count()}
    if not relax_only:
        if structures_path:
            structures = read_structures(structures_path)
        else:
            structures = perturbed_demo(count) if kind == "perturbed" else near_misses(count)
        results.update({"input": str(structures_path or kind),
                        "metrics_without_relaxation": bench_metrics(structures, repeat, mattergen_blas_threads)})
        print(json.dumps(results, indent=2), flush=True)
    if relax_structures:
        results["relaxation"] = bench_relaxation(0, read_structures(relax_structures), tuple(relax_variants.split(",")))
        results["relaxation"]["input"] = str(relax_structures)
    elif relax_count:
        results["relaxation"] = bench_relaxation(relax_count, None, tuple(relax_variants.split(",")))
    out = ROOT / "runs" / "bench" / "bench_evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
