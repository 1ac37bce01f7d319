"""The ``provide`` patches of :mod:`crygen.patches` at work: torch_scatter and torch_sparse,
which MatterGen imports, served from crygen's plain-PyTorch versions where they are not installed.

:func:`install` puts a finder last on ``sys.meta_path``, so an installed package is always found
first. It runs when crygen is imported and, through the ``crygen.pth`` that ``make setup``
writes, at every interpreter start in crygen's venv: MatterGen's own scripts (its
``mattergen-generate``, a ``CrystalGenerator`` in a fresh process) import torch_scatter before
anything of crygen. This module is kept light for that reason; the patch table is read only
when one of the modules is looked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MODULES = ("torch_scatter", "torch_sparse")


class ProvidedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the ``provide`` patches' modules when nothing before it on ``sys.meta_path`` can."""

    def __init__(self) -> None:
        self._probing = False

    def find_spec(self, name, path=None, target=None):
        if name not in MODULES or self._probing:
            return None
        # torch_geometric probes for these packages when first imported and then calls whatever
        # it found for its own operations: it must find them absent, as they are
        self._probing = True
        try:
            import torch_geometric.typing  # noqa: F401
        finally:
            self._probing = False
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        from crygen.patches import PATCHES

        patch = next(p for p in PATCHES.values() if p.kind == "provide" and p.target == module.__name__)
        plain = importlib.import_module(patch.replacement)
        module.__dict__.update({k: v for k, v in vars(plain).items() if not k.startswith("__")})
        module.__doc__ = f"crygen's plain-PyTorch {patch.target} ({patch.replacement}): {patch.why}"


def install() -> None:
    """Place the finder last on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, ProvidedModules) for f in sys.meta_path):
        sys.meta_path.append(ProvidedModules())


def provided(module: str) -> bool:
    """Whether ``module`` was served by crygen's plain version in this process."""
    spec = getattr(sys.modules.get(module), "__spec__", None)
    return isinstance(getattr(spec, "loader", None), ProvidedModules)
