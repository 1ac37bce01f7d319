"""Where crygen's evaluation reaches into MatterGen at run time, through the patches declared in
:mod:`crygen.patches` (what each replaces, why, the version it was read against).

* :func:`fast_smact_validity`: MatterGen's ``smact_validity`` replaced by crygen's early-exit one
  (``crygen.mattergen.validity.smact_validity``) for the duration;
* :func:`answered_checks`: MatterGen's ``is_smact_valid`` and ``structure_validity`` answer
  precomputed structures (each structure's validity checks run once; MatterGen's metrics ask twice);
* :func:`precompute`: writes the capability's cached ``dataset``, ``is_unique`` and
  ``matches_in_reference`` (MatterGen's cached properties) from crygen's matching;
* :func:`answer_is_ordered`: writes the reference's cached ``is_ordered`` (answered by
  :class:`crygen.reference.Reference` from the stored sites, without decoding every entry).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from crygen import patches
from crygen.evaluation.matching import PreparedMatcher, ReducedFormStore, _dataset

if TYPE_CHECKING:
    from crygen.evaluation.matching_ahead import MatchingAhead


@contextlib.contextmanager
def fast_smact_validity() -> Iterator[None]:
    """MatterGen's evaluator with crygen's early-exit SMACT validity, for the duration."""
    with patches.applied("evaluation.smact_validity"):
        yield


def answer_is_ordered(reference: Any, ordered: bool) -> None:
    """MatterGen's cached ``reference.is_ordered`` set to ``ordered`` (crygen's answer, the same
    value found sooner: :func:`crygen.reference.all_ordered`)."""
    patches.fill("reference.is_ordered", reference, ordered)


def precompute(capability: Any, store: Path | None = None,
               ahead: "MatchingAhead | None" = None) -> dict[int, tuple[bool, bool]]:
    """Per-structure validity checks, and uniqueness and novelty filled into ``capability``:
    MatterGen's own loops (``get_unique``, ``get_matches``) on MatterGen's own groups, with
    :class:`PreparedMatcher` deciding each pair as MatterGen's matcher does.

    Returns the checks by ``id`` of the structure (see :func:`answered_checks`). Uniqueness and
    novelty are left to MatterGen's own path for anything but ordered structures and the default
    matcher. ``store``: where the reference's reduced forms are kept (:class:`ReducedFormStore`);
    ``ahead``: the same matching started in a child process (taken if it grouped as MatterGen did)."""
    from mattergen.evaluation.metrics import structure as metrics
    from mattergen.evaluation.utils.dataset_matcher import (
        OrderedDatasetMatcher,
        OrderedDatasetUniquenessComputer,
        get_global_match_dict_from_local_dict,
        get_mask_from_local_index,
    )
    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    structures = list(capability.structures)
    with fast_smact_validity():
        checks = {id(s): (bool(metrics.is_smact_valid(s)), bool(metrics.structure_validity(s))) for s in structures}
    matching = (isinstance(capability.uniqueness_computer, OrderedDatasetUniquenessComputer)
                and isinstance(capability.dataset_matcher, OrderedDatasetMatcher)
                and type(capability.structure_matcher) is DefaultDisorderedStructureMatcher)
    if not matching:
        return checks
    if "dataset" not in capability.__dict__:  # not computed yet
        patches.fill("evaluation.dataset", capability, _dataset(capability))
    data = capability.dataset.entries_by_reduced_formula
    answer = ahead.answer(data, capability.reference_dataset) if ahead is not None else None
    if answer is not None:
        unique, local_matches, reference = answer
    else:
        lookup = capability.reference_dataset.entries_by_reduced_formula
        reference = {k: list(lookup[k]) for k in data if k in lookup}  # each group read once
        unique, local_matches = match_groups(data, reference, store)
    patches.fill("evaluation.is_unique", capability, get_mask_from_local_index(data, unique))
    patches.fill("evaluation.matches_in_reference", capability,
                 get_global_match_dict_from_local_dict(data, reference, local_matches))
    return checks


def match_groups(data: Any, reference: dict[str, list], store: Path | None) -> tuple[dict, dict]:
    """MatterGen's ``get_unique`` and ``get_matches`` on each formula's group of ``data`` (MatterGen's
    entries by reduced formula) and its ``reference`` entries: local indices by formula."""
    from mattergen.evaluation.utils.dataset_matcher import get_matches, get_unique

    matcher = PreparedMatcher(ReducedFormStore(store))
    try:
        groups = {k: [matcher.prepare(e.structure) for e in entries] for k, entries in data.items()}
        matcher.store.prefetch([e.structure for entries in reference.values() for e in entries])
        unique = {k: get_unique(matcher, group) for k, group in groups.items()}
        local_matches: dict[str, dict] = {k: {} for k in data}
        for k, entries in reference.items():
            local_matches[k] = dict(get_matches(
                matcher, groups[k], [matcher.prepare(e.structure, stored=True) for e in entries]))
    finally:
        matcher.store.close()
    return unique, local_matches


@contextlib.contextmanager
def answered_checks(answers: dict[int, tuple[bool, bool]]) -> Iterator[None]:
    """MatterGen's ``is_smact_valid`` and ``structure_validity`` answer precomputed structures
    from ``answers`` (MatterGen's metrics ask for each twice) and compute any other."""
    def is_smact_valid(structure):
        known = answers.get(id(structure))
        return known[0] if known is not None else patches.original("evaluation.is_smact_valid")(structure)

    def structure_validity(structure, cutoff=0.5):
        known = answers.get(id(structure))
        if known is not None and cutoff == 0.5:
            return known[1]
        return patches.original("evaluation.structure_validity")(structure, cutoff)

    with patches.applied("evaluation.is_smact_valid", "evaluation.structure_validity",
                         evaluation__is_smact_valid=is_smact_valid,
                         evaluation__structure_validity=structure_validity):
        yield
