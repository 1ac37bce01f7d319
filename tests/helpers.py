"""Test helpers and paths to test data (one module, reached by Path constants)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "stages"
DEMO_DATA = ROOT / "data" / "alexandria" / "alexandria-random-1k.xyz"
BASE_MODEL = ROOT / "data" / "base_model"
TEST_FILES = ROOT / "tests" / "files"

NACL_CIF = """data_NaCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   4.0
_cell_length_b   4.0
_cell_length_c   4.0
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na0  0.0  0.0  0.0  1
  Cl  Cl1  0.5  0.5  0.5  1
"""


def cif(symbols: list[str], frac: list[tuple[float, float, float]], a: float = 4.0, name: str = "X") -> str:
    """A P1 cubic CIF with the given sites."""
    head = NACL_CIF.split("loop_")[0].replace("data_NaCl", f"data_{name}").replace("4.0", f"{a}")
    rows = "\n".join(f"  {s}  {s}{i}  {x}  {y}  {z}  1" for i, (s, (x, y, z)) in enumerate(zip(symbols, frac)))
    return (head + "loop_\n _symmetry_equiv_pos_as_xyz\n  'x, y, z'\nloop_\n _atom_site_type_symbol\n"
            " _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n"
            f" _atom_site_occupancy\n{rows}\n")


def small_demo_frames(n: int, start: int = 0) -> list:
    """The first ``n`` generatable demo crystals of at most 8 atoms, as ASE Atoms."""
    import ase.io

    from crygen.structures import generatable_elements

    allowed = generatable_elements()
    frames = [a for a in ase.io.read(DEMO_DATA, ":") if set(a.numbers) <= allowed and len(a) <= 8]
    return frames[start : start + n]


def demo_subset(dest: Path, n: int, start: int = 0) -> Path:
    """:func:`small_demo_frames` as an extxyz file."""
    import ase.io

    ase.io.write(dest, small_demo_frames(n, start), format="extxyz")
    return dest


def demo_structures(n: int, start: int = 0) -> list:
    """:func:`small_demo_frames` as pymatgen Structures."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return [AseAtomsAdaptor.get_structure(a) for a in small_demo_frames(n, start)]


def run_stage(name: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``stages/<name>.py`` as a user would, in a subprocess."""
    proc = subprocess.run(
        [sys.executable, str(STAGES / f"{name}.py"), *map(str, args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The last non-empty stderr line: where a stage states its one-line error."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    return lines[-1] if lines else ""
