"""The embedded default dataset: 1,000 relaxed Alexandria PBE crystals from PyPI.

MatterSim's source distribution carries ``data/benchmarks/alexandria-random-1k.xyz`` (a
random sample of the Alexandria database, CC-BY 4.0: Schmidt et al., Alexandria materials
database, https://alexandria.icams.rub.de). ``make data`` fetches that sdist with pip (the
only registry reachable from here), extracts the one file and checks its SHA-256, so every
machine trains and validates on exactly the same crystals.

    python -m crygen.demo_data DEST_FILE
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from crygen.fileio import CrygenError, atomic_path, sha256_file

SDIST = "mattersim==1.2.3"
MEMBER = "mattersim-1.2.3/data/benchmarks/alexandria-random-1k.xyz"
SHA256 = "067b94bde28b2c88b57c3e38cab72bee7e551820b7eb3489eaf49d1595f538d2"


def fetch(dest: Path) -> Path:
    if dest.is_file() and sha256_file(dest) == SHA256:
        return dest
    with tempfile.TemporaryDirectory() as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "mattersim",
               "--quiet", "-d", tmpdir, SDIST]
        subprocess.run(cmd, check=True)
        (sdist,) = Path(tmpdir).glob("mattersim-*.tar.gz")
        with tarfile.open(sdist) as tar:
            data = tar.extractfile(MEMBER).read()
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
        if sha256_file(tmp) != SHA256:
            raise CrygenError(dest, f"SHA-256 mismatch for {MEMBER} from {SDIST}")
    return dest


if __name__ == "__main__":
    try:
        print(fetch(Path(sys.argv[1])))
    except CrygenError as e:
        sys.exit(f"demo_data: error: {e}")
