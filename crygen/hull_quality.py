"""How far a hull built from a potential's energies can be trusted: the same entries' hulls from
DFT and from the potential, compared per entry (:func:`hull_quality`), on pymatgen's MP entries
paired with the reference's own structures (:func:`mp_pairs`)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

STABLE_WITHIN = 0.1  # eV/atom, MatterGen's stability threshold

def corrected_entry(structure: Any, energy: float, scheme: Any, material_id: str, **data: Any) -> Any:
    """A ``ComputedStructureEntry`` made by the MatterGen code that treats generated crystals
    (``MetricsStructureSummary.from_structure_and_energy``), with ``scheme``'s correction."""
    from mattergen.evaluation.utils.metrics_structure_summary import MetricsStructureSummary

    entry = MetricsStructureSummary.from_structure_and_energy(
        structure, energy, original_structure=structure, energy_correction_scheme=scheme).entry
    entry.data.update(material_id=material_id, **data)
    return entry


def paired_mp_entries(calc_compounds: dict[str, Any], potential_entries: Iterable[Any]) -> list[tuple[Any, Any]]:
    """pymatgen's MP entries (raw DFT, with their own run parameters) that share a reduced formula
    with a matbench entry of the reference, each paired with the lowest-energy such entry.

    The pair is of one composition, not of one relaxed structure: MP's entry and matbench's
    structure come from the same database, but may be different polymorphs."""
    from monty.json import MontyDecoder

    lowest: dict[str, Any] = {}
    for e in potential_entries:
        if e.data.get("source") == "matbench_dielectric":
            formula = e.composition.reduced_formula
            if formula not in lowest or e.energy_per_atom < lowest[formula].energy_per_atom:
                lowest[formula] = e
    pairs = []
    for d in calc_compounds.values():
        mp = MontyDecoder().process_decoded(d)
        twin = lowest.get(mp.composition.reduced_formula)
        if twin is not None and len(mp.composition) > 1:
            pairs.append((mp, twin))
    return pairs


def hull_quality(pairs: Sequence[tuple[Any, Any]], threshold: float = STABLE_WITHIN) -> dict[str, Any]:
    """The potential's hull against DFT's over the same compositions.

    ``pairs``: (DFT entry, potential entry) of one composition, both corrected as their hull
    needs. Each compound's chemical system gets two hulls over the same entries (those of the
    system and its subsystems), one from each side; its energy above each is compared: mean
    absolute error (also over the compounds not on both hulls, whose error is not zero by
    construction), and agreement on "stable within ``threshold``" with DFT as the truth
    (precision, recall, F1); overall and for each source's compounds. The formation energy's
    error (against each side's lowest elemental entries) says more where a compound stands
    alone in its system's entries, and so on both hulls."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    pairs = [(d, p) for d, p in pairs if np.isfinite(d.energy) and np.isfinite(p.energy)]
    dft = [PDEntry(d.composition, d.energy, name=str(i)) for i, (d, _) in enumerate(pairs)]
    ml = [PDEntry(p.composition, p.energy, name=str(i)) for i, (_, p) in enumerate(pairs)]
    compounds = [i for i, (d, _) in enumerate(pairs) if len(d.composition) > 1]
    # one hull per chemical system, over the entries of it and its subsystems (as MatterGen
    # does): one diagram over every element at once is beyond qhull
    hulls: dict[frozenset, tuple[Any, Any]] = {}
    e_dft, e_ml, form_dft, form_ml = [], [], [], []
    for i in compounds:
        system = frozenset(dft[i].composition.elements)
        if system not in hulls:
            inside = [j for j, e in enumerate(dft) if set(e.composition.elements) <= system]
            hulls[system] = (PhaseDiagram([dft[j] for j in inside]), PhaseDiagram([ml[j] for j in inside]))
        e_dft.append(hulls[system][0].get_e_above_hull(dft[i], allow_negative=True))
        e_ml.append(hulls[system][1].get_e_above_hull(ml[i], allow_negative=True))
        form_dft.append(hulls[system][0].get_form_energy_per_atom(dft[i]))
        form_ml.append(hulls[system][1].get_form_energy_per_atom(ml[i]))
    e_dft, e_ml = np.array(e_dft), np.array(e_ml)
    form_error = np.abs(np.array(form_ml) - np.array(form_dft))
    source = np.array([pairs[i][1].data.get("source", "?") for i in compounds])
    return {
        "compounds": len(compounds),
        "entries_in_each_hull": len(pairs),
        "stable_within_eV_per_atom": threshold,
        **_agreement(e_dft, e_ml, threshold),
        "formation_energy_mae_eV_per_atom": round(float(form_error.mean()), 4) if len(form_error) else None,
        "by_source": {name: {"compounds": int(np.sum(source == name)),
                             **_agreement(e_dft[source == name], e_ml[source == name], threshold),
                             "formation_energy_mae_eV_per_atom": round(float(form_error[source == name].mean()), 4)}
                      for name in sorted(set(source))},
        "method": ("per chemical system, two convex hulls over the same entries: DFT energies (raw PBE(+U) with MP2020 "
                   "corrections) and the potential's relaxed energies (corrected as the evaluation corrects them); each "
                   "compound's energy above its own side's hull compared, DFT taken as the truth"),
    }


def _agreement(e_dft: np.ndarray, e_ml: np.ndarray, threshold: float) -> dict[str, Any]:
    """Errors of the potential's energies above hull against DFT's, and agreement on "stable
    within ``threshold``" (precision, recall, F1; None where undefined)."""
    error = np.abs(e_ml - e_dft)
    off_hull = (e_dft > 1e-6) | (e_ml > 1e-6)  # a compound on both hulls has no error by construction
    truth, said = e_dft <= threshold, e_ml <= threshold
    tp = int(np.sum(truth & said))
    precision = tp / int(said.sum()) if said.any() else None
    recall = tp / int(truth.sum()) if truth.any() else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None

    def r(x):
        return None if x is None else round(float(x), 4)

    return {
        "energy_above_hull_mae_eV_per_atom": r(error.mean()) if len(error) else None,
        "energy_above_hull_median_abs_error_eV_per_atom": r(np.median(error)) if len(error) else None,
        "off_hull_compounds": int(off_hull.sum()),
        "energy_above_hull_mae_off_hull_eV_per_atom": r(error[off_hull].mean()) if off_hull.any() else None,
        "dft_stable": int(truth.sum()), "potential_stable": int(said.sum()), "both_stable": tp,
        "precision": r(precision), "recall": r(recall), "f1": r(f1),
    }


def mp_pairs(calc_compounds: dict[str, Any], entries: Sequence[Any]) -> list[tuple[Any, Any]]:
    """pymatgen's MP entries paired with the reference's matbench entries, MP2020-corrected with
    their own run parameters (an entry MP2020 rejects is left out)."""
    import warnings

    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    compatibility = MaterialsProject2020Compatibility(check_potcar=False)
    pairs = []
    for mp, twin in paired_mp_entries(calc_compounds, entries):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            corrected = compatibility.process_entry(mp)
        if corrected is not None:
            corrected.data["material_id"] = mp.entry_id
            pairs.append((corrected, twin))
    return pairs

