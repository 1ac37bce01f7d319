"""crygen/parts.py: parts claimed as shards go are each taken by exactly one process."""

from __future__ import annotations

import subprocess
import sys

from crygen.parts import Claims, share_of

TAKER = """
import sys
from pathlib import Path
from crygen.parts import Claims
claims = Claims(Path(sys.argv[1]))
print(" ".join(name for name in (f"part-{j}" for j in range(200)) if claims.take(name)))
"""


def test_racing_processes_take_each_part_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    taken = [proc.communicate()[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    everything = [name for names in taken for name in names]
    assert sorted(everything) == sorted(f"part-{j}" for j in range(200))  # each once, none lost


def test_a_run_that_ended_takes_nothing(tmp_path):
    assert not Claims(tmp_path / "removed").take("part-0")  # the parent removed the claims: stop


def test_claimed_shares_offer_every_part_fixed_shares_their_own():
    assert share_of(range(5), (2, 2), None) == [1, 3]
    assert share_of(range(5), (2, 2), Claims(".")) == [0, 1, 2, 3, 4]
