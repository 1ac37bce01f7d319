"""The embedded default dataset: 1,000 relaxed Alexandria PBE crystals from PyPI.

MatterSim's source distribution carries ``data/benchmarks/alexandria-random-1k.xyz`` (a
random sample of the Alexandria database, CC-BY 4.0: Schmidt et al., Alexandria materials
database, https://alexandria.icams.rub.de). ``make data`` fetches that sdist with pip (the
only registry reachable from here), extracts the one file and checks its SHA-256, so every
machine trains and validates on exactly the same crystals.

    python -m crygen.demo_data DEST_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

from crygen.fileio import CrygenError, atomic_path, sha256_file
from crygen.packaged import PackagedFile, download_member

DEMO = PackagedFile("demo", "mattersim==1.2.3", "sdist", "mattersim-1.2.3/data/benchmarks/alexandria-random-1k.xyz",
                    "067b94bde28b2c88b57c3e38cab72bee7e551820b7eb3489eaf49d1595f538d2",
                    "mattersim: MIT; data: Alexandria, CC-BY 4.0 (Schmidt et al.)",
                    "1,000 relaxed Alexandria PBE crystals with their energies")


def fetch(dest: Path) -> Path:
    if dest.is_file() and sha256_file(dest) == DEMO.sha256:
        return dest
    data = download_member(DEMO)  # hash-checked
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest


if __name__ == "__main__":
    try:
        print(fetch(Path(sys.argv[1])))
    except CrygenError as e:
        sys.exit(f"demo_data: error: {e}")
