"""crygen/evaluation/matching.py: uniqueness and novelty pairs decided as MatterGen's matcher
decides them, the reduced-form store, and MatterGen's dataset copies."""

from __future__ import annotations

import os

import numpy as np

from tests.helpers import demo_structures


def matcher_cases():
    """Real demo crystals with variants on both sides of MatterGen's matcher tolerances: small and
    large perturbations (stol 0.3), anisotropic strains (ltol 0.2), supercells, oxidation states,
    two substitutable elements trading sites in a supercell (the ordered match fails, the
    Hume-Rothery disordered one may not), and a disordered variant."""
    from mattergen.evaluation.utils.structure_matcher import check_is_disordered

    base = demo_structures(60, start=400)
    substitutable = [s for s in base if len(s) <= 6 and check_is_disordered(s)[0]][:3]
    plain = [s for s in base if len(s) <= 6 and not check_is_disordered(s)[0]][:2]
    # Structure.perturb draws from numpy's global generator: seeded here, after every import
    # and read that might draw from it first (the cases were otherwise not the same in every run)
    np.random.seed(0)
    out = []
    for s in substitutable + plain:
        group = [s]
        for d in (0.02, 0.2 * (s.volume / len(s)) ** (1 / 3), 0.3 * (s.volume / len(s)) ** (1 / 3)):
            group.append(s.copy().perturb(d))
        for e in (0.15, 0.25):
            group.append(s.copy().apply_strain([e, 0, 0]))
        group.append(s * (2, 1, 1))
        group.append(s.copy().add_oxidation_state_by_guess())
        ok, cliques = check_is_disordered(s)
        if ok:
            a, b = (str(e) for e in cliques[0][:2])
            w = s * (2, 1, 1)
            ia = next(i for i, site in enumerate(w) if site.specie.symbol == a)
            ib = next(i for i, site in enumerate(w) if site.specie.symbol == b)
            w.replace(ia, b, w[ia].frac_coords)
            w.replace(ib, a, w[ib].frac_coords)
            group.append(w)
            group.append(s.copy().replace_species({a: {a: 0.5, b: 0.5}}))
        out += group
    return out


def test_prepared_matcher_decides_every_pair_as_mattergens_matcher():
    """crygen's matcher (each structure reduced once, not once per pair) against MatterGen's
    DefaultDisorderedStructureMatcher on every ordered pair of real structures, both orders."""
    import itertools
    from collections import Counter

    from mattergen.evaluation.utils.structure_matcher import DefaultDisorderedStructureMatcher

    from crygen.evaluation import PreparedMatcher

    structures = matcher_cases()
    theirs = DefaultDisorderedStructureMatcher()
    ours = PreparedMatcher()
    prepared = [ours.prepare(s) for s in structures]
    seen = Counter()
    disordered_fit = ours.disordered_matcher.fit

    def counted(a, b):
        result = disordered_fit(a, b)
        seen[("disordered", a.is_ordered and b.is_ordered, result)] += 1
        return result

    ours.disordered_matcher.fit = counted
    for i, j in itertools.product(range(len(structures)), repeat=2):
        expected = theirs.fit(structures[i], structures[j])
        assert ours.fit(prepared[i], prepared[j]) == expected, (i, j)
        if i != j and structures[i].composition.reduced_formula == structures[j].composition.reduced_formula:
            seen[("same formula", expected)] += 1
    # the cases cover matches and near-misses, and both outcomes of the disordered fallback
    assert seen[("same formula", True)] > 100 and seen[("same formula", False)] > 50, seen
    assert seen[("disordered", False, True)] and seen[("disordered", False, False)]


def test_near_misses_give_mattergens_values_with_a_cold_and_a_warm_store(default_reference, tmp_path, monkeypatch):
    """The whole evaluation on ordered near-misses against a reference holding some originals,
    with the reference's reduced forms computed (cold store) and read back (warm store)."""
    import sqlite3

    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    from crygen.evaluation import evaluate, mattergen_metrics
    from crygen.reference import with_training_set

    store = tmp_path / "reduced_forms.sqlite"
    monkeypatch.setenv("CRYGEN_REDUCED_FORMS", str(store))
    structures = [s for s in matcher_cases() if s.is_ordered]
    originals = ReferenceDataset.from_entries("originals", [
        ComputedStructureEntry(s, energy=-len(s), data={"material_id": f"o{i}"}) for i, s in enumerate(structures[::9])])
    for reference in (originals, with_training_set(default_reference, structures[1::9])):
        theirs = mattergen_metrics(structures, reference)
        assert 0 < theirs["frac_unique_structures"] < 1 and 0 < theirs["frac_novel_structures"] < 1
        assert evaluate(structures, reference).metrics == theirs  # cold
        assert evaluate(structures, reference).metrics == theirs  # warm
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM reduced").fetchone()[0] > 0


def test_matching_ahead_in_a_child_gives_this_process_own_evaluation(default_reference, tmp_path, monkeypatch):
    """Matching in a forked child while MatterGen's evaluator is imported (``matching_ahead``):
    the evaluation equals this process's own; the child's answer is taken; a child that grouped
    otherwise than MatterGen, or failed, is refused and the parent matches itself."""
    import crygen.evaluation.matching_ahead as ahead
    from crygen.evaluation import evaluate, mattergen_hooks

    monkeypatch.setenv("CRYGEN_REDUCED_FORMS", str(tmp_path / "reduced_forms.sqlite"))
    structures = [s for s in matcher_cases() if s.is_ordered][:150]
    taken: list[bool] = []
    real_answer, real_start, real_match = ahead.MatchingAhead.answer, ahead.MatchingAhead.start.__func__, \
        mattergen_hooks.match_groups

    def answer(self, data, dataset):
        got = real_answer(self, data, dataset)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(ahead.MatchingAhead, "answer", answer)
    monkeypatch.setattr(ahead, "_second_core_allowed", lambda: False)
    alone = evaluate(structures, default_reference)
    assert taken == []
    monkeypatch.setattr(ahead, "_second_core_allowed", lambda: True)
    assert 0 < alone.metrics["frac_novel_structures"] < 1 and 0 < alone.metrics["frac_unique_structures"] < 1

    def same(result):
        assert result.metrics == alone.metrics and result.table == alone.table

    same(evaluate(structures, default_reference))
    assert taken == [True]

    def regrouped(cls, *args):  # the child's groups told otherwise than they were
        started = real_start(cls, *args)
        first = next(iter(started.groups))
        started.groups[first] = [*started.groups[first], -1]
        return started

    monkeypatch.setattr(ahead.MatchingAhead, "start", classmethod(regrouped))
    same(evaluate(structures, default_reference))
    assert taken == [True, False]
    monkeypatch.setattr(ahead.MatchingAhead, "start", classmethod(real_start))
    parent = os.getpid()

    def failing_in_the_child(*args):
        if os.getpid() != parent:
            raise RuntimeError("the child failed")
        return real_match(*args)

    monkeypatch.setattr(mattergen_hooks, "match_groups", failing_in_the_child)
    same(evaluate(structures, default_reference))
    assert taken == [True, False, False]


def test_reduced_form_store_gives_back_what_pymatgen_computes(tmp_path):
    from crygen.evaluation import ReducedFormStore, _reduced_form

    structures = demo_structures(6)
    moved = structures[0].copy()
    moved.translate_sites([0], [1e-15, 0, 0])  # a different structure, however slightly
    for _ in range(2):  # fill the store, then read from it
        store = ReducedFormStore(tmp_path / "store.sqlite")
        for s in [*structures, moved]:
            ours, theirs = store.reduced_form(s), _reduced_form(s)
            assert type(ours) is type(theirs) and ours.lattice.matrix.tobytes() == theirs.lattice.matrix.tobytes()
            assert ours.frac_coords.tobytes() == theirs.frac_coords.tobytes()
            assert ours.species_and_occu == theirs.species_and_occu and ours.labels == theirs.labels
        store.close()
    assert ReducedFormStore.key(moved) != ReducedFormStore.key(structures[0])
    assert ReducedFormStore(None).reduced_form(moved).frac_coords.tobytes() == _reduced_form(moved).frac_coords.tobytes()


def _same(a, b, shared, path="entry"):
    """``a`` and ``b`` hold the same values, types and all, bit for bit; ``shared`` collects the
    objects ``b`` shares with the original (mutable ones must not be)."""
    import types

    assert type(a) is type(b), path
    if isinstance(a, (types.MethodType, types.FunctionType)):  # e.g. of an ASE calculator kept on the structure
        assert getattr(a, "__func__", a) is getattr(b, "__func__", b), path
        return
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    elif isinstance(a, float):
        assert repr(a) == repr(b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], shared, f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, shared, f"{path}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        _same(vars(a), vars(b), shared, f"{path}.__dict__")
    else:
        assert a == b, path
    shared.append(b)


def test_dataset_copies_are_mattergens_deep_copies():
    """crygen's copy of the capability's dataset (pickled) against MatterGen's (deepcopy): the
    same entries, attribute by attribute, and no mutable object shared with the caller's."""
    import enum
    from types import SimpleNamespace

    from mattergen.evaluation.metrics.core import BaseMetricsCapability
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary

    from crygen.evaluation import _dataset

    structures = demo_structures(6)
    structures[1].add_oxidation_state_by_guess()
    structures[2].add_site_property("magmom", [0.5] * len(structures[2]))
    structures[3].properties["material_id"] = "x"
    summaries = [MetricsStructureSummary.from_structure(s) for s in structures]
    summaries.append(MetricsStructureSummary.from_structure_and_energy(structures[0], -3.25))
    capability = SimpleNamespace(_structure_summaries=summaries)  # all that the dataset reads
    theirs = list(BaseMetricsCapability.dataset.func(capability))
    ours = list(_dataset(capability))
    assert [e.entry_id for e in ours] == list(range(len(summaries)))
    for s, a, b in zip(summaries, theirs, ours):
        shared: list = []
        _same(a, b, shared)
        originals = []
        _same(s.entry, s.entry, originals)
        immutable = (str, int, float, type(None), tuple, np.generic, enum.Enum)  # Element is an Enum
        mutable = {id(x) for x in originals if not isinstance(x, immutable)}
        assert not [x for x in shared if id(x) in mutable]


# --------------------------------------------------------------------------- what a number stands on
