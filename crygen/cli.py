"""What every stage script shares: one-line errors, seeding, and a timing record.

A stage's ``main`` is wrapped with :func:`stage`: a :class:`~crygen.fileio.CrygenError`
becomes ``<stage>: error: <file>: <problem>`` on stderr and exit status 2; the wall time
and peak memory of a successful run go to ``$CRYGEN_TIMINGS_DIR/<stage>.json`` when the
Makefile sets that variable (``summarize`` reads them back).
"""

from __future__ import annotations

import functools
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import click

from crygen.fileio import CrygenError, write_json


def stage(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            start = time.time()
            try:
                result = fn(*args, **kwargs)
            except CrygenError as e:
                click.echo(f"{name}: error: {e}", err=True)
                sys.exit(2)
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


def say(message: str) -> None:
    """A line for the person at the terminal (a stage event, a result); library output is not."""
    click.echo(message, err=True)


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
