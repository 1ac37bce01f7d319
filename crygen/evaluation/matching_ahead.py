"""Uniqueness and novelty matched in a forked process while this one imports MatterGen's evaluator.

A whole ``make eval-gen RELAX=0`` spends about as long importing MatterGen's evaluator (pymatgen's
VASP input sets and compatibility schemes, matplotlib, pandas: ~2.5 s on two CPU cores) as it
spends matching 334 crystals with the reference (~1.5 s). The matching needs none of those
modules, so where a second core is free a child forked before the import matches while the
parent imports. The parent takes the child's answer only for the groups MatterGen's evaluator
forms itself (the same formulas holding the same entries, compared in
:func:`crygen.evaluation.mattergen_hooks.precompute`) and matches in this process otherwise: no
``fork``, one core or one thread allowed, a disordered structure or reference (MatterGen matches
those another way), or a child that failed.

The child reads only what the parent read before forking (the structures, the reference entries
of their formulas: the LMDB environment is not used across the fork), opens the store of reduced
forms itself, writes its answer to a pipe and leaves with ``os._exit`` (no exit handlers of the
parent's run in it).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Sequence

Groups = dict[str, list[int]]  # entry ids by reduced formula


class MatchingAhead:
    """A forked child matching ``structures`` with a reference; :meth:`answer` collects it."""

    def __init__(self, pid: int, fd: int, groups: Groups, reference_dataset: Any, reference: dict[str, list]):
        self.pid, self.fd = pid, fd
        self.groups = groups  # how the child grouped the structures
        self.reference_dataset = reference_dataset
        self.reference = reference  # the reference entries of each formula, read before the fork

    @classmethod
    def start(cls, structures: Sequence[Any], reference_dataset: Any, store: Path | None) -> "MatchingAhead | None":
        """The child started, or None where it would not help (see the module's docstring).
        ``reference_dataset``: MatterGen's ``ReferenceDataset``, known to be ordered."""
        if not _second_core_allowed() or not all(s.is_ordered for s in structures):
            return None
        import numpy as np
        from pymatgen.entries.computed_entries import ComputedStructureEntry

        from crygen.evaluation.mattergen_hooks import match_groups
        from crygen.evaluation.matching import numbered_dataset

        # the entry MatterGen's MetricsStructureSummary.from_structure makes of a structure
        data = numbered_dataset([ComputedStructureEntry(structure=s, energy=np.nan) for s in structures]
                                ).entries_by_reduced_formula
        lookup = reference_dataset.entries_by_reduced_formula
        reference = {k: list(lookup[k]) for k in data if k in lookup}
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: match, answer, leave
            os.close(read_fd)
            try:
                from threadpoolctl import threadpool_limits

                with threadpool_limits(limits=1):  # as in the parent: 3x3 inverses, BLAS threads cost more
                    answer = match_groups(data, reference, store)
                payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:  # noqa: BLE001 - any failure: the parent matches itself
                payload = b""
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
            os._exit(0)
        os.close(write_fd)
        return cls(pid, read_fd, grouping(data), reference_dataset, reference)

    def answer(self, data: Any, reference_dataset: Any) -> tuple[dict, dict, dict] | None:
        """``(unique, local_matches, reference)`` by formula for MatterGen's groups ``data`` of
        ``reference_dataset``, or None when the child grouped otherwise or failed."""
        payload = self.collect()
        if not payload or reference_dataset is not self.reference_dataset or grouping(data) != self.groups:
            return None
        unique, local_matches = pickle.loads(payload)
        return unique, local_matches, self.reference

    def collect(self) -> bytes:
        """The child's answer (empty if it failed), the child waited for; once."""
        if self.fd is None:
            return b""
        with os.fdopen(self.fd, "rb") as pipe:
            payload = pipe.read()
        self.fd = None
        os.waitpid(self.pid, 0)
        return payload

    def close(self) -> None:
        """The child ended and waited for, its answer unread (after an error in the parent)."""
        if self.fd is not None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
            self.collect()


def grouping(data: Any) -> Groups:
    """MatterGen's groups by reduced formula as entry ids, in their order."""
    return {k: [e.entry_id for e in entries] for k, entries in data.items()}


def _second_core_allowed() -> bool:
    """A second core this process may use, and torch allowed more than one thread (``THREADS``)."""
    if not hasattr(os, "fork") or not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        return False
    import torch  # imported already by pymatgen's monty; its thread count is crygen's THREADS

    return torch.get_num_threads() > 1
