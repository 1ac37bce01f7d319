"""What an evaluation records about its inputs: the structures' source and content hash, the
generation beside them, the settings that made it (by content) and the account of samples drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crygen.dataset import PreparedDataset
    from crygen.evaluation.metrics import Evaluation
    from crygen.reference import Reference


def structures_source(results: Path) -> Path:
    """The structures a results path stands for: a results folder's generated_crystals.extxyz,
    else the path itself (an extxyz, a CIF zip, a folder of CIFs)."""
    crystals = Path(results) / "generated_crystals.extxyz"
    return crystals if crystals.is_file() else Path(results)


def structures_sha256(source: Path) -> str:
    """Content hash of the structures read from ``source``: a file, or the files directly in a
    folder (the CIF reader does not descend, so an evaluation folder inside changes nothing)."""
    from crygen.fileio import sha256_file, sha256_tree

    if source.is_file():
        return sha256_file(source)
    return sha256_tree(source, {p.name: sha256_file(p) for p in sorted(source.iterdir()) if p.is_file()})


def generation_info(results: Path) -> dict[str, Any]:
    """``generation.json`` beside the structures (a pipeline's or ``make sample``'s), {} without one."""
    from crygen.fileio import read_json

    path = Path(results) / "generation.json" if Path(results).is_dir() else None
    return read_json(path) if path is not None and path.is_file() else {}


def evaluation_settings(results: Path, reference: Reference, training_data: PreparedDataset | None, relax: bool,
                        potential: dict[str, Any] | None, fmax: float, max_steps: int,
                        generation: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation of ``results`` depends on, by content: its structures, the reference
    file, the training set (novelty), and the relaxation settings. ``metrics_summary.json``
    records it; an evaluation is reused, and a pipeline's accepted by ``summarize``, only when
    the recorded settings equal these. ``potential``: ``potential_identity`` (None unrelaxed);
    ``generation``: :func:`generation_info` of ``results`` (its condition, when conditioned)."""
    from crygen.relaxation import energy_correction

    settings = {
        "structures_sha256": structures_sha256(structures_source(results)),
        "reference_sha256": reference.sha256,
        "training_data_sha256": training_data.sha256() if training_data else None,
        "relaxed": relax,
        "potential": potential if relax else None,
        "energy_correction": energy_correction(potential["name"]) if relax else None,
        "fmax": fmax if relax else None,
        "max_steps": max_steps if relax else None,
    }
    condition = generation.get("condition")
    if condition:
        settings["condition"] = condition
    return settings


def settings_folder_name(settings: dict[str, Any], reference: Reference) -> str:
    """A folder name that says which settings made an evaluation, e.g.
    ``relaxed-chgnet-d14ab7c0_reference_chgnet-ce08026c`` (potential and reference by name and
    the start of their content hash), for ``eval-gen`` without ``EVAL_OUT``."""
    potential = settings["potential"]
    how = f"relaxed-{potential['name']}-{potential['weights_sha256'][:8]}" if settings["relaxed"] else "unrelaxed"
    return f"{how}_{reference.path.name.removesuffix('.gz')}-{settings['reference_sha256'][:8]}"


def settings_differences(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The names of the settings in which ``recorded`` differs from ``expected``."""
    return [k for k in sorted({*recorded, *expected}) if recorded.get(k) != expected.get(k)]


VALIDITY_KINDS = ("structure_validity", "comp_validity", "structure_comp_validity")  # MatterGen's per-structure names


SAMPLE_PARTS = ("drawn", "written", "failed_sanity_check", "lost_in_failed_batches")


def sample_counts(generation: dict[str, Any], structures: int, generation_path: Path) -> dict[str, int] | None:
    """``generation.json``'s account of the samples drawn, checked against itself and the
    ``structures`` read (None without one: structures from elsewhere)."""
    from crygen.fileio import CrygenError

    samples = generation.get("samples")
    if samples is None:
        return None
    if not isinstance(samples, dict) or not all(
            isinstance(samples.get(k), int) and not isinstance(samples.get(k), bool) and samples[k] >= 0
            for k in SAMPLE_PARTS):
        raise CrygenError(generation_path, f"'samples' must hold non-negative integers {', '.join(SAMPLE_PARTS)}")
    if samples["drawn"] != samples["written"] + samples["failed_sanity_check"] + samples["lost_in_failed_batches"]:
        raise CrygenError(generation_path, "'samples': drawn is not written + failed_sanity_check + lost_in_failed_batches")
    if samples["written"] != structures:
        raise CrygenError(generation_path, f"'samples' says {samples['written']} written, the results hold {structures} "
                                           f"structures (mixed outputs of two generations?)")
    return {k: samples[k] for k in SAMPLE_PARTS}


def validity_over_samples(evaluation: Evaluation, samples: dict[str, int] | None) -> dict[str, Any]:
    """Validity over every sample the generator drew (``samples``: :func:`sample_counts`),
    beside MatterGen's over the structures written: a sample that failed generate's sanity check
    or was lost in a failed batch is invalid, and so is a structure whose relaxation failed.
    Without an account of the samples the denominator is the structures given."""
    written = len(evaluation.table)
    valid = {kind: sum(1 for row in evaluation.table if row.get(kind) is True) for kind in VALIDITY_KINDS
             if any(kind in row for row in evaluation.table)}
    if samples is None:
        return {"drawn": None, "structures_given": written, "valid": valid,
                "denominator": f"the {written} structures given (no sample accounting in a generation.json: "
                               f"samples a generator dropped are not known)"}
    drawn = samples["drawn"]
    return {
        **samples,
        "valid": valid,
        **{f"frac_{kind}_over_drawn": (count / drawn if drawn else None) for kind, count in valid.items()},
        "denominator": (f"all {drawn} drawn samples: the {samples['failed_sanity_check']} that failed the sanity check, "
                        f"the {samples['lost_in_failed_batches']} lost in failed batches and any failed relaxation count "
                        f"as invalid; MatterGen's avg_*_validity in metrics are over the {written} written structures"),
    }
