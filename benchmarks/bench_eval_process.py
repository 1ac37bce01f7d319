"""Benchmark: evaluation as a user runs it, whole process against whole process (issue 19).

    python benchmarks/bench_eval_process.py [--structures PATH | --count 334] [--repeat 2] [--old DIR]

crygen's side is ``make eval-gen RELAX=0 RESULTS=...`` into a fresh folder each time; MatterGen's
is a fresh ``python`` doing what MatterGen's ``evaluate`` does without energies, with MatterGen's
own functions (its ``load_structures``, ``LMDBGZSerializer``, ``MetricsEvaluator``), on the same
structures and the same reference (crygen's default, in MatterGen's LMDB-gz format). Both
compute validity, uniqueness and novelty against that reference, so their values must agree;
the script checks that they do. Each side's wall time counts everything the user
waits for: interpreter start, imports, reading the structures and the reference, matching,
writing. crygen runs twice per round: first as on a new machine (an empty store of the
reference's reduced forms, ``CRYGEN_REDUCED_FORMS`` pointing at a new file), then with the store
that run filled. Runs alternate, MatterGen's first in each round; the best of each is compared.

Without ``--structures`` the input is ``--count`` demo crystals changed around the matcher's
tolerances (``bench_evaluation.near_misses``): matches, rejections and the disordered fallback.
Results go to stdout and runs/bench/bench_eval_process.json.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def write_structures(structures_path: Path | None, count: int, folder: Path) -> tuple[Path, int]:
    """The input as ``generated_crystals.extxyz`` in a results folder both commands read, and
    how many structures it holds."""
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    from crygen.structures import read_structures

    if structures_path:
        structures = read_structures(structures_path)
    else:
        from bench_evaluation import near_misses

        structures = near_misses(count)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "generated_crystals.extxyz"
    ase.io.write(path, [AseAtomsAdaptor.get_atoms(s) for s in structures], format="extxyz")
    return path, len(structures)


def timed(command: list[str], env: dict, cwd: Path = ROOT) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds


# MatterGen's side: what its ``evaluate`` does without relaxation or energies (its command
# ``mattergen-evaluate --relax=False`` needs an energies file), with its own functions only
MATTERGEN_SCRIPT = """
import json, sys
from pathlib import Path
from mattergen.common.utils.eval_utils import load_structures
from mattergen.evaluation.metrics.evaluator import MetricsEvaluator
from mattergen.evaluation.reference.reference_dataset_serializer import LMDBGZSerializer
structures = load_structures(Path(sys.argv[1]))
reference = LMDBGZSerializer().deserialize(sys.argv[2])
evaluator = MetricsEvaluator.from_structures(structures, reference=reference)
metrics = evaluator.compute_metrics(metrics=evaluator.available_metrics)
Path(sys.argv[3]).write_text(json.dumps({k: float(v) for k, v in metrics.items()}))
"""


def run_mattergen(structures: Path, reference: Path, out: Path, env: dict) -> tuple[float, dict]:
    seconds = timed([str(ROOT / ".venv/bin/python"), "-c", MATTERGEN_SCRIPT, str(structures), str(reference), str(out)],
                    env)
    return seconds, json.loads(out.read_text())


def run_crygen(results: Path, out: Path, store: Path, env: dict, checkout: Path = ROOT) -> tuple[float, dict]:
    env = dict(env, CRYGEN_REDUCED_FORMS=str(store))
    command = ["make", "--no-print-directory", "eval-gen", f"RESULTS={results}", "RELAX=0", f"EVAL_OUT={out}"]
    if checkout != ROOT:  # its crygen first on the path; this one's set-up kept (not redone for it)
        env["PYTHONPATH"] = str(checkout)
        command.append("ENV_READY=1")
    seconds = timed(command, env, checkout)
    return seconds, json.loads((out / "metrics.json").read_text())


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@click.command()
@click.option("--structures", "structures_path", default=None, type=click.Path(exists=True, path_type=Path))
@click.option("--count", default=334, show_default=True, help="near-miss demo crystals, without --structures")
@click.option("--repeat", default=2, show_default=True, help="rounds, each MatterGen, crygen cold, crygen warm")
@click.option("--old", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="a checkout of an earlier crygen (set up, or its .venv and data linked to this one's), "
                   "run cold and warm in each round too: the old code against the new in one run")
def main(structures_path, count, repeat, old):
    from crygen.reference import reference_file

    reference = reference_file("default")
    env = dict(os.environ, TQDM_DISABLE="1", CRYGEN_LOG_DIR="")
    work = Path(tempfile.mkdtemp(prefix="bench_eval_process_"))
    try:
        structures, written = write_structures(structures_path, count, work / "results")
        sides = {"crygen_cold": ROOT, "crygen_warm": ROOT}
        if old:
            sides.update({"old_cold": old, "old_warm": old})
        times: dict[str, list[float]] = {"mattergen": [], **{kind: [] for kind in sides}}
        loads = []
        values = {}
        for r in range(repeat):
            loads.append(loadavg())
            seconds, saved = run_mattergen(structures, reference, work / f"mattergen{r}.json", env)
            times["mattergen"].append(seconds)
            values["mattergen"] = saved
            for kind, checkout in sides.items():
                # a new store for each cold run: the cold run is a new machine's, the warm one reuses it
                store = work / f"reduced_forms{r}_{kind.split('_')[0]}.sqlite"
                seconds, metrics = run_crygen(structures.parent, work / f"{kind}{r}", store, env, checkout)
                times[kind].append(seconds)
                values[kind] = metrics
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
        names = set().union(*values.values())
        differ = {k: [values[side].get(k) for side in values] for k in sorted(names)
                  if len({json.dumps(values[side].get(k)) for side in values}) > 1}
        best = {k: min(v) for k, v in times.items()}
        results = {
            "structures": str(structures_path or f"{count} near-miss demo crystals"), "count_written": written,
            "cpu_count": os.cpu_count(), "loadavg_before_each_round": loads, "seconds": times, "best": best,
            "speedup_cold": best["mattergen"] / best["crygen_cold"], "speedup_warm": best["mattergen"] / best["crygen_warm"],
            **({"new_over_old_cold": best["old_cold"] / best["crygen_cold"],
                "new_over_old_warm": best["old_warm"] / best["crygen_warm"]} if old else {}),
            "values": values["crygen_warm"], "values_differ": differ,
        }
        out = ROOT / "runs" / "bench" / "bench_eval_process.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
        if differ:
            raise SystemExit(f"crygen's and MatterGen's values differ: {differ}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
