"""SMACT validity as MatterGen's evaluation asks it, answered sooner."""

from __future__ import annotations

import math

# SMACT validity beyond this many oxidation-state combinations is not decided (False).
MAX_SMACT_COMBINATIONS = 200_000


def smact_validity(comp, count, use_pauling_test=True, include_alloys=True, include_cutoff=False,
                   use_element_symbol=False) -> bool:
    """MatterGen's ``smact_validity`` with the same answer, found sooner.

    MatterGen's version lists every charge-balanced combination of oxidation states before
    answering whether there is one; for a 15-element sample that is ~4^15 combinations and
    the evaluation never ends. This one stops at the first combination that passes, and
    gives up (False, counted as invalid) after MAX_SMACT_COMBINATIONS. An element SMACT has
    no oxidation states for makes the composition invalid (MatterGen's raises TypeError)."""
    import itertools

    import smact
    from mattergen.evaluation.metrics.structure import pauling_test
    from pymatgen.core import Element

    symbols = tuple(comp) if use_element_symbol else tuple(str(Element.from_Z(Z=z)) for z in comp)
    space = smact.element_dictionary(symbols)
    elements = list(space.values())
    if len(set(symbols)) == 1:
        return True
    if include_alloys and all(s in smact.metals for s in symbols):
        return True
    ox_combos = [e.oxidation_states for e in elements]
    if any(o is None for o in ox_combos):  # SMACT knows no charges (Pm...): MatterGen raises
        return False
    if include_cutoff and math.prod(len(o) for o in ox_combos) > 1e6:
        return True
    electronegs = [e.pauling_eneg for e in elements]
    stoichs = [(c,) for c in count]
    threshold = max(count)
    for i, ox_states in enumerate(itertools.product(*ox_combos)):
        if i >= MAX_SMACT_COMBINATIONS:
            return False
        balanced, ratios = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)
        if not balanced or not ratios:
            continue
        if use_pauling_test:
            try:
                if not pauling_test(ox_states, electronegs):
                    continue
            except TypeError:  # no electronegativity data: MatterGen assumes it passes
                pass
        return True
    return False

