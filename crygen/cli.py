"""What every stage script shares: a quiet console, one-line errors, seeding, and a timing record.

A stage's ``main`` is wrapped with :func:`stage`: a :class:`~crygen.fileio.CrygenError`
becomes ``<stage>: error: <file>: <problem>`` on stderr and exit status 2; the wall time
and peak memory of a successful run go to ``$CRYGEN_TIMINGS_DIR/<stage>.json`` when the
Makefile sets that variable (``summarize`` reads them back).

When ``$CRYGEN_LOG_DIR`` is set (the Makefile sets ``OUT/logs``), everything the process
and its libraries write (file descriptors 1 and 2: prints, warnings, logging, C extensions)
goes to ``<dir>/<stage>.log``; the terminal gets only :func:`say`'s lines and the one-line
error (both also in the log). An unexpected exception is one line on the terminal that
points at the log, which holds the traceback. Without the variable nothing is redirected.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import os
import random
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, TextIO

import click

from crygen import patches
from crygen.fileio import CrygenError, one_line, write_json
from crygen.settings import BY_NAME as SETTINGS

# The terminal while a stage's output goes to its log (None: no log, the terminal is stderr).
_terminal: TextIO | None = None


def stage(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.time()
            log = _log_to_file(name)
            try:
                patches.check_versions()  # a library upgraded under a patch stops here, in one line
                result = fn(*args, **kwargs)
            except CrygenError as e:
                say(f"{name}: error: {e}")
                sys.exit(2)
            except Exception as e:
                if log is None:
                    raise
                traceback.print_exc()  # into the log
                say(f"{name}: error: unexpected {one_line(e)[:300]} (traceback in {log})")
                sys.exit(1)
            timings_dir = os.environ.get("CRYGEN_TIMINGS_DIR")
            if timings_dir:
                write_json(
                    Path(timings_dir) / f"{name}.json",
                    {
                        "stage": name,
                        "wall_s": round(time.time() - start, 2),
                        "peak_rss_mb": round(peak_rss_mb(), 1),
                    },
                )
            return result

        return run

    return wrap


def run_script(main: Callable) -> None:
    """A stage script's entry point: ``main`` (its click command), then the process ends at once.

    Python's teardown of a stage's modules (torch, MatterGen, pymatgen: millions of objects)
    took about 2 s per process after every output was written and closed: a second per stage of
    the pipeline and per shard. The exit handlers still run and the streams are flushed; only
    the freeing, which the OS does at once, is skipped."""
    try:
        main()
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):  # as Python would: the message, status 1
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, _terminal):
        if stream is not None:
            stream.flush()
    os._exit(code)


def setting_option(name: str, *decls: str, typed: bool = True, **kwargs) -> Callable:
    """A click option for pipeline setting ``name``: its default is the one crygen/settings.py
    declares, typed as the setting parses it (``typed=False``: its text, for an option the stage
    parses itself), its help that setting's meaning unless the stage says more."""
    setting = SETTINGS[name]
    kwargs.setdefault("help", setting.meaning[:1].upper() + setting.meaning[1:] + ".")
    return click.option(*decls, default=setting.value if typed else setting.default, **kwargs)


def say(message: str) -> None:
    """A line for the person at the terminal (a stage event, a result); library output is not.
    With a log, the line goes to both."""
    if _terminal is not None:
        click.echo(message, file=_terminal)
    click.echo(message, err=True)


def terminal() -> TextIO:
    """Where a progress bar should draw: the terminal, even while output goes to a log."""
    return _terminal if _terminal is not None else sys.stderr


def _log_to_file(name: str) -> Path | None:
    """Point file descriptors 1 and 2 at ``$CRYGEN_LOG_DIR/<name>.log`` for the rest of the
    process (libraries keep writing there at exit), keeping the terminal for :func:`say`."""
    global _terminal
    log_dir = os.environ.get("CRYGEN_LOG_DIR")
    if not log_dir or _terminal is not None:
        return None
    log = Path(log_dir) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    _terminal = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"==== {name} {started}: {' '.join(sys.argv)}", file=sys.stderr)
    say(f"{name}: running (its libraries' output: {log})")  # in place of make's echo of the command
    return log


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0  # Linux reports KiB


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> str:
    """``auto`` takes a GPU when torch sees one; an explicit ``cuda`` without one is an error."""
    import torch

    requested = (requested or "auto").lower()
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CrygenError(None, f"DEVICE={requested} but torch sees no CUDA device")
    if requested not in ("cpu",) and not requested.startswith("cuda"):
        raise CrygenError(None, f"DEVICE={requested}: expected auto, cpu or cuda[:N]")
    return requested


def threads_per_process(threads: int, shards: int) -> int:
    """CPU threads for each of ``shards`` processes: ``threads``, or with 0 the cores divided among them."""
    return threads if threads > 0 else max(1, (os.cpu_count() or 1) // max(1, shards))


def use_threads(threads: int) -> int:
    """Run torch, and the BLAS and OpenMP pools loaded in this process, on ``threads`` threads;
    returns it. What MatterGen's sampler draws depends on it, so it is recorded with every block
    and part. The pools matter as much as torch: OpenBLAS's spare threads spin between calls,
    and a one-process relaxation on one torch thread ran 1.6x faster with them limited
    (a shard's process gets them limited from its start: crygen.shards.POOL_VARIABLES)."""
    import numpy  # noqa: F401  (its BLAS loaded, so that the limit reaches it)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # for the rest of the process, not a scope
    return threads


def shard_device(device: str, shard: int) -> str:
    """The device of shard ``shard`` (from 1): with DEVICE=cuda and several visible GPUs, one
    each in turn; otherwise ``device`` as it is."""
    if device != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{(shard - 1) % count}" if count > 1 else device


def device_kind(device: str) -> str:
    """What sampled crystals and relaxed energies depend on besides threads: ``cpu``, or the GPU's model."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))

