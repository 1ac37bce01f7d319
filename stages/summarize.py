"""Collect a pipeline run into summary.json, with provenance.

Keys: checkpoint, metrics {baseline, finetuned, delta, delta_ci95}, conditioning (a
property-conditioned run: properties, condition, guidance, conditional vs unconditional
validation loss), generation_dir,
generation_eval {count, metrics, relaxed, additional_metrics, withheld_metrics,
validity_over_drawn_samples, potential_check, settings, ...} or {error} (a generation evaluation
whose recorded settings are not this run's is refused), and provenance (crygen, mattergen and
torch versions, git commit, settings and seeds, device, wall time of each stage).
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import click

import crygen
from crygen.cli import say, stage
from crygen.fileio import CrygenError, read_json, write_json


def git_commit() -> str | None:
    root = Path(crygen.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
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
            out[pkg] = None
    return out


def check_evaluation_settings(path: Path, summary: dict, run_dir: Path, settings: dict, generation: dict) -> None:
    """Refuse a generation evaluation that is not this run's: one made with other settings
    (RELAX, POTENTIAL, REFERENCE; e.g. `make eval-gen RELAX=0 EVAL_OUT=<this run's results>`),
    of other structures, reference content or training set than the run's now."""
    from crygen.evaluation import evaluation_settings, settings_differences
    from crygen.reference import reference_file
    from crygen.relaxation import FMAX_DEFAULT, MAX_STEPS_DEFAULT, potential_identity

    relax = settings.get("RELAX", True)  # typed by crygen/settings.py
    if not isinstance(relax, bool):
        raise CrygenError(None, f"settings: RELAX={relax!r}, expected true or false (crygen/settings.py json)")
    expected = evaluation_settings(
        path.parent, reference_file(settings.get("REFERENCE", "default")), run_dir / "data", relax,
        potential_identity(settings.get("POTENTIAL", "chgnet")) if relax else None, FMAX_DEFAULT, MAX_STEPS_DEFAULT,
        generation)
    differing = settings_differences(summary.get("settings") or {}, expected)
    if differing:
        raise CrygenError(path, f"not this run's evaluation: its {', '.join(differing)} differ from the run's "
                                f"(RELAX={settings.get('RELAX')} POTENTIAL={settings.get('POTENTIAL')} "
                                f"REFERENCE={settings.get('REFERENCE')}); remove it and run make pipeline again")


@click.command(help=__doc__)
@click.option("--run-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--settings", "settings_file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="JSON file of the run's settings (the Makefile's, normalised by crygen/settings.py).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Default: RUN_DIR/summary.json.")
@stage("summarize")
def main(run_dir: Path, settings_file: Path, out: Path | None):
    from crygen.evaluation import generation_info

    settings_obj = read_json(settings_file)
    if not isinstance(settings_obj, dict):
        raise CrygenError(settings_file, "expected a JSON object of settings")
    ckpt = run_dir / "finetune" / "checkpoints" / "last.ckpt"
    metrics = read_json(run_dir / "evaluation" / "metrics.json")
    gen_dir = run_dir / "generation" / "results"
    eval_summary = gen_dir / "metrics_summary.json"
    eval_error = gen_dir / "EVALUATION_FAILED.txt"
    gen_info = generation_info(gen_dir)
    if eval_summary.is_file() and not eval_error.is_file():
        s = read_json(eval_summary)
        check_evaluation_settings(eval_summary, s, run_dir, settings_obj, gen_info)
        generation_eval = {k: s[k] for k in ("count", "metrics", "relaxed", "additional_metrics", "withheld_metrics",
                                             "validity_over_drawn_samples", "potential_check", "settings",
                                             "uncovered_chemical_systems", "condition") if k in s}
    else:
        reason = eval_error.read_text().strip() if eval_error.is_file() else "no metrics_summary.json"
        generation_eval = {"error": reason}
    timings = {}
    for f in sorted((run_dir / "timings").glob("*.json")):
        t = read_json(f)
        timings[t["stage"]] = {"wall_s": t["wall_s"], "peak_rss_mb": t["peak_rss_mb"]}
    summary = {
        "checkpoint": str(ckpt.resolve()),
        "metrics": {k: metrics[k] for k in ("baseline", "finetuned", "delta", "delta_ci95")},
        "generation_dir": str(gen_dir.resolve()),
        "generation_eval": generation_eval,
        "provenance": {
            "versions": versions(),
            "git_commit": git_commit(),
            "settings": settings_obj,
            "seeds": {"pipeline": settings_obj.get("SEED"), "validation": metrics.get("seed"),
                      "generation": gen_info.get("seed")},
            "device": gen_info.get("device"),
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
    write_json(out or run_dir / "summary.json", summary)
    say(f"summarize: {out or run_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
