"""Provenance of a pipeline run, and its ``summary.json``.

:func:`summarize_run` collects a run folder into the summary: the validation metrics, the
generation's evaluation (refused when its recorded settings are not the run's:
:func:`check_evaluation_settings`) and the provenance (crygen, MatterGen and torch versions,
git commit, settings and seeds, device, wall time of each stage).
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import crygen
from crygen.fileio import CrygenError, read_json
from crygen.layout import RunFolder

ROOT = Path(__file__).resolve().parents[1]
# what summary.json keeps of the generation's metrics_summary.json
GENERATION_EVAL_KEYS = ("count", "metrics", "relaxed", "additional_metrics", "withheld_metrics",
                        "validity_over_drawn_samples", "potential_check", "settings", "uncovered_chemical_systems",
                        "condition", "relaxation_parts")


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict[str, str | None]:
    out = {"crygen": crygen.__version__, "python": platform.python_version()}
    for pkg in ("mattergen", "torch", "pytorch-lightning", "pymatgen", "torch_scatter", "torch_sparse"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            # MatterGen then runs on crygen's plain versions (crygen/patches.py, ``provide``)
            out[pkg] = "not installed: crygen.mattergen.torch_ops" if pkg in ("torch_scatter", "torch_sparse") else None
    return out


def stage_timings(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Wall time and peak memory of each stage, from ``RUN_DIR/timings/<stage>.json``."""
    timings = {}
    for f in sorted(RunFolder(run_dir).part("timings").glob("*.json")):
        t = read_json(f)
        timings[t["stage"]] = {"wall_s": t["wall_s"], "peak_rss_mb": t["peak_rss_mb"]}
    return timings


def check_evaluation_settings(path: Path, summary: dict, run_dir: Path, settings: dict, generation: dict) -> None:
    """Refuse a generation evaluation that is not this run's: one made with other settings
    (RELAX, POTENTIAL, REFERENCE; e.g. `make eval-gen RELAX=0 EVAL_OUT=<this run's results>`),
    of other structures, reference content or training set than the run's now."""
    from crygen.dataset import PreparedDataset
    from crygen.evaluation import evaluation_settings, settings_differences
    from crygen.reference import Reference
    from crygen.relaxation import FMAX_DEFAULT, MAX_STEPS_DEFAULT, potential_identity

    relax = settings.get("RELAX", True)  # typed by crygen/settings.py
    if not isinstance(relax, bool):
        raise CrygenError(None, f"settings: RELAX={relax!r}, expected true or false (crygen/settings.py json)")
    expected = evaluation_settings(
        path.parent, Reference.from_spec(settings.get("REFERENCE", "default")), PreparedDataset(RunFolder(run_dir).part("data")),
        relax, potential_identity(settings.get("POTENTIAL", "chgnet")) if relax else None, FMAX_DEFAULT,
        settings.get("RELAX_STEPS", MAX_STEPS_DEFAULT), generation)
    differing = settings_differences(summary.get("settings") or {}, expected)
    if differing:
        raise CrygenError(path, f"not this run's evaluation: its {', '.join(differing)} differ from the run's "
                                f"(RELAX={settings.get('RELAX')} POTENTIAL={settings.get('POTENTIAL')} "
                                f"REFERENCE={settings.get('REFERENCE')}); remove it and run make pipeline again")


def generation_evaluation(gen_dir: Path, run_dir: Path, settings: dict, gen_info: dict) -> dict[str, Any]:
    """What summary.json keeps of the generation's evaluation, or ``{"error": reason}``."""
    eval_summary = gen_dir / "metrics_summary.json"
    eval_error = gen_dir / "EVALUATION_FAILED.txt"
    if eval_summary.is_file() and not eval_error.is_file():
        s = read_json(eval_summary)
        check_evaluation_settings(eval_summary, s, run_dir, settings, gen_info)
        return {k: s[k] for k in GENERATION_EVAL_KEYS if k in s}
    reason = eval_error.read_text().strip() if eval_error.is_file() else "no metrics_summary.json"
    return {"error": reason}


def summarize_run(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` of the pipeline run in ``run_dir`` made with ``settings`` (the
    Makefile's, normalised by crygen/settings.py)."""
    from crygen.evaluation import generation_info

    run = RunFolder(run_dir)
    ckpt = run.part("finetune") / "checkpoints" / "last.ckpt"
    metrics = read_json(run.part("validation"))
    gen_dir = run.part("results")
    gen_info = generation_info(gen_dir)
    generation_eval = generation_evaluation(gen_dir, run_dir, settings, gen_info)
    timings = stage_timings(run_dir)
    summary = {
        "checkpoint": str(ckpt.resolve()),
        "metrics": {k: metrics[k] for k in ("baseline", "finetuned", "delta", "delta_ci95")},
        "generation_dir": str(gen_dir.resolve()),
        "generation_eval": generation_eval,
        # written by make report after this summary (make pipeline ends with it), from the run's files
        "report": str((run.part("report") / "index.html").resolve()),
        "provenance": {
            "versions": versions(),
            "git_commit": git_commit(),
            "settings": settings,
            "seeds": {"pipeline": settings.get("SEED"), "validation": metrics.get("seed"),
                      "generation": gen_info.get("seed")},
            "device": gen_info.get("device"),
            "generation_blocks": gen_info.get("blocks"),  # which blocks ran where, their seeds and times
            "validation": {k: metrics.get(k) for k in ("n_val", "draws", "pairing", "interval")},
            "stages": timings,
        },
    }
    if metrics.get("properties"):
        summary["conditioning"] = {
            "properties": metrics["properties"],
            "condition": gen_info.get("condition"),
            "guidance": gen_info.get("guidance"),
            "validation": {k: metrics[k] for k in ("unconditional", "conditioning")},
        }
    return summary
