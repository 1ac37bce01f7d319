"""An evaluation's relaxation in fixed parts, each written when done: resumable, and spread over
SHARDS processes.

The structures are cut into parts of a fixed size (:data:`PART_SIZE`): part ``j`` holds
structures ``[j*size, (j+1)*size)`` and is relaxed on its own (one
:func:`crygen.relaxation.relax` call), so what it holds never depends on which other parts ran
with it, in which process or in which order. Each finished part is a
:class:`~crygen.parts.PartStore` record in ``<out>/relaxation-parts/<key>/part-NNNNNN.json.gz``,
the key naming everything that changes what a part holds: the structures' content hash, the
potential (name and weights hash), fmax, max_steps, the batch atom budget, the part size, the
thread count and the device type. A rerun after a kill relaxes only the parts missing there.

With SHARDS=1 the parts are relaxed in the stage's own process; with SHARDS=N each of N child
processes of the stage (``--share k/N``, :func:`crygen.shards.run_shards`) takes the parts
as they go (:class:`crygen.parts.Claims`); a remote task (``make remote-share``) relaxes the parts
``in_share(j, (k, N))``. Either way the caller reads every part back from disk (computed or
found), so the relaxed structures are the same objects (pymatgen dicts, floats exact in JSON)
whatever ran them, and the metrics are computed once on the merged set.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from crygen.cli import device_kind
from crygen.fileio import CrygenError
from crygen.parts import Claims, PartStore, in_share, settings_key, share_of

PART_SIZE = 32  # structures per part: small enough to lose little to a kill, large enough to fill a batch
PART_FORMAT = 1
WORK_FOLDER = "relaxation-parts"
# Tests: a process relaxing parts dies (as if killed) once it has written this many, with more to do.
STOP_AFTER_PARTS = "CRYGEN_TEST_STOP_AFTER_PARTS"


@dataclass
class Sharding:
    """How the relaxation is spread: ``shards`` processes of ``threads`` torch threads each (0:
    as torch has it), parts of ``part_size``; ``command(k, out, device)``: the command line of
    shard ``k``'s process (needed with ``shards`` > 1)."""

    shards: int = 1
    threads: int = 0
    part_size: int = PART_SIZE
    command: Callable[[int, Path, str], list[str]] | None = None


@dataclass(frozen=True)
class RelaxationWork:
    """The parts of one evaluation's relaxation (:func:`open_work`)."""

    store: PartStore
    key: str
    size: int
    count: int  # structures

    @property
    def parts(self) -> int:
        return -(-self.count // self.size)

    @staticmethod
    def name(j: int) -> str:
        return f"part-{j:06d}"

    def bounds(self, j: int) -> tuple[int, int]:
        return j * self.size, min((j + 1) * self.size, self.count)

    def missing(self, share: tuple[int, int] = (1, 1)) -> list[int]:
        return [j for j in range(self.parts) if in_share(j, share) and not self.store.has(self.name(j))]


def open_work(out: Path, structures_sha256: str, potential: dict[str, Any], fmax: float, max_steps: int,
              part_size: int, threads: int, device: str, count: int) -> RelaxationWork:
    """The parts folder of these structures relaxed with these settings, under ``out``."""
    from crygen.relaxation import MAX_ATOMS_PER_BATCH_DEFAULT

    if part_size < 1:
        raise CrygenError(None, f"relaxation part size {part_size}: must be at least 1")
    key = settings_key("relax", {
        "format": PART_FORMAT, "structures_sha256": structures_sha256, "potential": potential, "fmax": fmax,
        "max_steps": max_steps, "max_atoms_per_batch": MAX_ATOMS_PER_BATCH_DEFAULT, "part_size": part_size,
        "threads": threads, "device": device_kind(device),
    })
    return RelaxationWork(PartStore(Path(out) / WORK_FOLDER / key, "relaxation part"), key, part_size, count)


def relax_parts(structures: Sequence[Any], work: RelaxationWork, indices: list[int], potential_spec: str,
                device: str, fmax: float, max_steps: int, threads: int, shard: str, claims: Claims | None = None) -> None:
    """Relax parts ``indices`` of ``structures`` one by one, writing each when it is done (with
    ``claims``, those of them this process takes)."""
    from crygen.cli import say
    from crygen.relaxation import load_potential, relax

    if not indices:
        return
    model = load_potential(potential_spec, device)
    report_every = max(1, -(-len(indices) // 10))
    stop_after = int(os.environ.get(STOP_AFTER_PARTS) or 0)
    done = 0
    for j in indices:
        if claims is not None and not claims.take(work.name(j)):
            continue
        done += 1
        start, end = work.bounds(j)
        began = time.time()
        relaxed = relax(structures[start:end], model, fmax=fmax, max_steps=max_steps)
        work.store.write(work.name(j), part_record(j, work.size, relaxed, time.time() - began, shard, device, threads))
        if done % report_every == 0 or done == len(indices):
            say(f"evaluate_generated: {done}{'' if claims else f'/{len(indices)}'} parts relaxed (shard {shard}; "
                f"last: part {j + 1} of {work.parts}, {time.time() - began:.1f} s)")
        if done == stop_after and done < len(indices):
            say(f"evaluate_generated: killed after {done} part(s) ({STOP_AFTER_PARTS}, for tests)")
            os._exit(9)


def part_record(j: int, size: int, relaxed: list, seconds: float, shard: str, device: str,
                threads: int) -> dict[str, Any]:
    """A finished part as JSON: each relaxed structure as a pymatgen dict, its energy (None for
    NaN), steps, convergence and error; and where, how and how long it ran."""
    return {
        "format": PART_FORMAT, "index": j, "size": size,
        "results": [{"structure": r.structure.as_dict(), "energy": r.energy if math.isfinite(r.energy) else None,
                     "steps": int(r.steps), "converged": bool(r.converged), "error": r.error} for r in relaxed],
        "ran_on": {"shard": shard, "host": platform.node(), "pid": os.getpid(), "threads": threads,
                   "device": device, "seconds": round(seconds, 3)},
    }


def read_relaxed(work: RelaxationWork) -> tuple[list, dict[str, Any]]:
    """Every part read back: the relaxed structures in order, and the parts' provenance
    (``metrics_summary.json``'s ``relaxation_parts``)."""
    from pymatgen.core import Structure

    from crygen.relaxation import Relaxed

    relaxed: list = []
    parts = []
    for j in range(work.parts):
        record = work.store.read(work.name(j))
        start, end = work.bounds(j)
        if record.get("index") != j or len(record.get("results", [])) != end - start:
            raise CrygenError(work.store.path(work.name(j)), f"not part {j} of {end - start} structures; "
                                                             "delete it to redo it")
        relaxed += [Relaxed(Structure.from_dict(r["structure"]), math.nan if r["energy"] is None else r["energy"],
                            r["steps"], r["converged"], r["error"]) for r in record["results"]]
        parts.append({"index": j, **record["ran_on"]})
    return relaxed, {"size": work.size, "key": work.key, "parts": parts}


def relax_all(structures: Sequence[Any], work: RelaxationWork, potential_spec: str, device: str, fmax: float,
              max_steps: int, sharding: Sharding, source: Path) -> tuple[list, dict[str, Any]]:
    """Every part relaxed (those missing from ``work``: here, or in ``sharding.shards`` child
    processes) and read back; an error when every relaxation failed."""
    from crygen.cli import say

    missing = work.missing()
    how = (f"in {sharding.shards} processes of {sharding.threads} thread(s)" if sharding.shards > 1
           else f"on {sharding.threads} thread(s)")
    say(f"evaluate_generated: relaxing {len(structures)} structures with {potential_spec}: {len(missing)} of "
        f"{work.parts} parts of {work.size} to do {how} ({work.store.folder})")
    if missing and sharding.shards == 1:
        relax_parts(structures, work, missing, potential_spec, device, fmax, max_steps, sharding.threads, "1/1")
    elif missing:
        _run_children(work, sharding, device)
    relaxed, parts = read_relaxed(work)
    if all(r.error for r in relaxed):
        raise CrygenError(source, f"every relaxation failed (first: {relaxed[0].error})")
    return relaxed, parts


def _run_children(work: RelaxationWork, sharding: Sharding, device: str) -> None:
    from crygen.cli import shard_device
    from crygen.shards import run_shards

    if sharding.command is None:
        raise ValueError("sharded relaxation without a shard command")
    out = work.store.folder.parents[1]
    logs = Path(os.environ.get("CRYGEN_LOG_DIR") or work.store.folder)
    run_shards(lambda k: sharding.command(k, out, shard_device(device, k)), sharding.shards, logs, "relaxation",
               sharding.threads)


def relax_share(results: Path, out: Path, potential_spec: str, device: str, fmax: float, max_steps: int,
                sharding: Sharding, share: tuple[int, int]) -> None:
    """A shard's process: the missing parts of share ``(k, n)`` relaxed into ``out``'s parts
    folder, nothing else written."""
    from crygen.cli import say
    from crygen.evaluation.folder import read_named
    from crygen.evaluation.records import structures_sha256, structures_source
    from crygen.relaxation import potential_identity

    source = structures_source(results)
    structures, _ = read_named(source)
    work = open_work(out, structures_sha256(source), potential_identity(potential_spec), fmax, max_steps,
                     sharding.part_size, sharding.threads, device, len(structures))
    claims = Claims.of_this_process()
    mine = share_of(work.missing(), share, claims)
    say(f"evaluate_generated: share {share[0]}/{share[1]}: {len(mine)} parts to relax"
        f"{', taken as they go' if claims else ''} -> {work.store.folder}")
    relax_parts(structures, work, mine, potential_spec, device, fmax, max_steps, sharding.threads,
                f"{share[0]}/{share[1]}", claims)
