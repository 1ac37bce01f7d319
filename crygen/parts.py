"""Work done in parts, each written when complete, so that a job can stop at any moment, be
resumed, or be spread over several processes and machines: the reference build's relaxations,
generation's blocks, evaluation's relaxation shards.

A :class:`PartStore` is one folder of finished parts, each a gzip'd JSON record written
atomically (a part on disk is whole, or absent). The folder's name says what the parts were
made with (a key the caller derives from everything that changes their content), so parts of
other settings are never mixed in. Which parts a process takes is :func:`in_share`: part ``i``
(numbered from 0) belongs to share ``k`` of ``n`` when ``i % n == k - 1``, so a part's content
never depends on how the work was split.
"""

from __future__ import annotations

import gzip
import hashlib
import json
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
