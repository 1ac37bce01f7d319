"""Outputs that never look finished before they are: write to a temporary name, then rename.

Also the one error type every stage reports as a single line (see ``crygen.cli``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


class CrygenError(Exception):
    """A user-facing problem: printed as one line naming the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def one_line(e: BaseException) -> str:
    """``Type: first line of the message``, for a foreign exception inside a one-line error."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    Works for files and directories: whatever the caller creates at the yielded path
    replaces ``final`` in one rename (a directory replaces an earlier one whole).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written for {final}")
        replace_with(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_with(source: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put ``source`` (a file or a complete directory) at ``final`` by renaming; a directory
    already at ``final`` is replaced whole, never merged."""
    source, final = Path(source), Path(final)
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        source.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if source.is_dir() and (final.exists() or final.is_symlink()):
            final.unlink()  # a directory cannot be renamed onto a file or a link
        os.replace(source, final)


def dumps_json(data: Any, indent: int | None = 2) -> str:
    """Strict JSON: NaN or Infinity anywhere is an error here, never a file others cannot parse."""
    try:
        return json.dumps(data, indent=indent, sort_keys=False, default=_json_default, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{e}: {_non_finite_paths(data)}") from None


def _non_finite_paths(data: Any, at: str = "") -> list[str]:
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return [at or "<root>"]
    if hasattr(data, "tolist") and not isinstance(data, (str, bytes)):
        data = data.tolist()
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _non_finite_paths(v, f"{at}.{k}" if at else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in _non_finite_paths(v, f"{at}[{i}]")]
    return []


def write_json(path: str | os.PathLike, data: Any) -> None:
    text = dumps_json(data) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy and torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CrygenError(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise CrygenError(path, f"not valid JSON ({e.msg} at line {e.lineno})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of a file (key ``""``) or of each file below a directory, by relative path."""
    path = Path(path)
    if path.is_file():
        return {"": sha256_file(path)}
    return {str(f.relative_to(path)): sha256_file(f) for f in sorted(p for p in path.rglob("*") if p.is_file())}


def sha256_tree(path: str | os.PathLike, files: dict[str, str] | None = None) -> str:
    """Content hash of a file or of every file below a directory (names included); ``files``,
    from :func:`sha256_files`, spares reading them again."""
    files = sha256_files(path) if files is None else files
    if list(files) == [""]:
        return files[""]
    h = hashlib.sha256()
    for name, digest in files.items():
        h.update(name.encode())
        h.update(digest.encode())
    return h.hexdigest()
