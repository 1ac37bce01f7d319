"""Local shards: one job's parts spread over several processes of this machine (SHARDS=N).

Each shard is a child process of the stage, started with the stage's own command line plus
its share (``--share k/N``); it writes its parts (:mod:`crygen.parts`) and exits, and the
parent puts the finished parts together. A child's output goes to its own log, since N
processes writing to one terminal would interleave; a child that fails is named in one line
with its log, and what the others finished stays on disk for the rerun.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from crygen.fileio import CrygenError
from crygen.parts import CLAIMS_VARIABLE

# The parent's stage wrapper logs and times the stage; a child must do neither over its files.
_PARENT_ONLY = ("CRYGEN_LOG_DIR", "CRYGEN_TIMINGS_DIR")


def stage_command(script: str | Path, args: list[str]) -> list[str]:
    """The command that runs stage ``script`` with ``args`` in this Python."""
    return [sys.executable, str(script), *args]


# Thread pools a child sizes from its environment as its libraries load. Limited at run time
# instead (crygen.cli.use_threads), two shards on two cores still ran each relaxation part
# 1.4-5x slower than one process did; from the start they ran side by side at full speed
# (benchmarks/bench_shards.py).
POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run_shards(command: Callable[[int], list[str]], n: int, logs: Path, what: str, threads: int) -> None:
    """Run ``command(k)`` for k = 1..n side by side, each on ``threads`` threads and logging to
    ``logs/<what>-shard-k.log``; return when all have ended, or raise a one-line
    :class:`CrygenError` for the first that failed. The children take the parts as they go
    (:class:`crygen.parts.Claims`): parts take unequal times, and with fixed shares one of two
    relaxation shards stood idle for a fifth of the run (benchmarks/bench_shards.py)."""
    logs.mkdir(parents=True, exist_ok=True)
    claims = tempfile.mkdtemp(prefix="crygen-claims-")
    env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY}
    env.update({name: str(threads) for name in POOL_VARIABLES})
    env[CLAIMS_VARIABLE] = claims
    try:
        running = []
        for k in range(1, n + 1):
            log = logs / f"{what}-shard-{k}.log"
            with open(log, "w") as out:
                running.append((k, log, subprocess.Popen(command(k), stdout=out, stderr=subprocess.STDOUT, env=env)))
        ended = [(k, log, proc.wait()) for k, log, proc in running]
    finally:
        shutil.rmtree(claims, ignore_errors=True)
    for k, log, code in ended:
        if code != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            raise CrygenError(log, f"{what} shard {k}/{n} failed (exit {code}: {lines[-1] if lines else 'no output'}); "
                                   "what the shards finished is kept, and a rerun does only what is missing")
