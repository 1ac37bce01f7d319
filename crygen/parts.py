"""Work done in parts, each written when complete, so that a job can stop at any moment, be
resumed, or be spread over several processes and machines: the reference build's relaxations,
generation's blocks, evaluation's relaxation shards.

A :class:`PartStore` is one folder of finished parts, each a gzip'd JSON record written
atomically (a part on disk is whole, or absent). The folder's name says what the parts were
made with (a key the caller derives from everything that changes their content), so parts of
other settings are never mixed in. Which parts a process takes is :func:`in_share`: part ``i``
(numbered from 0) belongs to share ``k`` of ``n`` when ``i % n == k - 1``, so a part's content
never depends on how the work was split. Shards on one machine (:func:`crygen.shards.run_shards`)
share the parts out as they go instead (:class:`Claims`): each takes the next part no one has
taken, so one that draws slow parts is not left with a fixed share of them while the others idle.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from crygen.fileio import CrygenError, atomic_path, dumps_json, one_line

SUFFIX = ".json.gz"


def settings_key(prefix: str, settings: dict[str, Any]) -> str:
    """A folder name for parts made with ``settings`` (any JSON): ``<prefix>-<12 hex digits>``."""
    text = json.dumps(settings, sort_keys=True)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def in_share(index: int, share: tuple[int, int]) -> bool:
    """Whether part ``index`` (from 0) is in share ``k`` of ``n``."""
    k, n = share
    return index % n == k - 1


# Set by crygen.shards.run_shards for its children: the folder where they claim parts.
CLAIMS_VARIABLE = "CRYGEN_SHARD_CLAIMS"


class Claims:
    """Parts taken as the shards of one run go: a part is taken by the first process to create
    its claim file (atomic on one file system). A fresh folder per run, so a killed run's
    claims never hold a part back from the rerun."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def of_this_process(cls) -> "Claims | None":
        """This shard's claims, when its parent shares the parts out as they go."""
        folder = os.environ.get(CLAIMS_VARIABLE)
        return cls(Path(folder)) if folder else None

    def take(self, name: str) -> bool:
        """Whether this process takes part ``name`` (no other has)."""
        try:
            os.close(os.open(self.folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        except FileNotFoundError:  # the parent has ended the run
            return False
        return True


def share_of(indices: list[int], share: tuple[int, int], claims: Claims | None) -> list[int]:
    """The parts (indices from 0) a process may do: its share's, or all of them when the parts
    are claimed as they go (it then does those it :meth:`Claims.take`)."""
    return list(indices) if claims is not None else [i for i in indices if in_share(i, share)]


class PartStore:
    """The finished parts in ``folder`` (``<name>.json.gz`` each); ``what`` names them in errors."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{SUFFIX}"

    def names(self) -> list[str]:
        return sorted(p.name[: -len(SUFFIX)] for p in self.folder.glob(f"*{SUFFIX}"))

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def read(self, name: str) -> dict[str, Any]:
        path = self.path(name)
        try:
            return json.loads(gzip.decompress(path.read_bytes()))
        except Exception as e:
            raise CrygenError(path, f"unreadable {self.what} ({one_line(e)}); delete it to redo it") from None

    def write(self, name: str, record: dict[str, Any]) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.compress(dumps_json(record, indent=None).encode(), mtime=0))
        return path
