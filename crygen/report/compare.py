"""Runs side by side (``make compare``): one table, as HTML and as CSV, of what each run's
summary.json says. Rows are the settings (those that differ marked), the validation deltas
with their 95 % intervals, the generation metrics with their denominators, the stage times and
the versions; columns are the runs, in the order given.

Only the runs' summary.json files are read: nothing is recomputed.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crygen.fileio import CrygenError, atomic_path, read_json
from crygen.layout import RunFolder
from crygen.report import cell_text
from crygen.settings import run_settings

DIFFERS = "differs"  # the CSV's and the page's mark on a setting or version that is not the same in every run


@dataclass
class Row:
    section: str
    quantity: str
    values: list[Any]  # one per run; None where a run has none
    differs: bool = False  # marked: settings and versions only (metrics are expected to differ)


def read_summaries(runs: list[Path]) -> list[dict[str, Any]]:
    if len(runs) < 2:
        raise CrygenError(None, f"RUNS: {len(runs)} run folder(s) given; compare needs two or more")
    summaries = []
    for root in runs:
        if not root.is_dir():
            raise CrygenError(root, "no such run folder")
        path = RunFolder(root).part("summary")
        if not path.is_file():
            raise CrygenError(path, "no summary.json: not a finished run (run `make pipeline OUT=...` first)")
        summaries.append(read_json(path))
    return summaries


def comparison_rows(summaries: list[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []

    def add(section: str, quantity: str, values: list[Any], mark: bool = False) -> None:
        if all(v is None for v in values):
            return
        rows.append(Row(section, quantity, values, mark and len({cell_text(v) for v in values}) > 1))

    provenance = [s.get("provenance", {}) for s in summaries]
    settings = [run_settings(p.get("settings", {})) for p in provenance]
    for key in _keys(settings):
        add("setting", key, [s.get(key) for s in settings], mark=True)
    add("setting", "device", [p.get("device") for p in provenance], mark=True)

    metrics = [s.get("metrics") or {} for s in summaries]
    for term in _keys(m.get("delta", {}) for m in metrics):
        add("validation", f"{term}: base", [m.get("baseline", {}).get(term) for m in metrics])
        add("validation", f"{term}: fine-tuned", [m.get("finetuned", {}).get(term) for m in metrics])
        add("validation", f"{term}: change (fine-tuned - base)", [m.get("delta", {}).get(term) for m in metrics])
        add("validation", f"{term}: change, 95 % interval", [_interval(m, term) for m in metrics])
    add("validation", "held-out structures", [p.get("validation", {}).get("n_val") for p in provenance])

    evaluations = [s.get("generation_eval") or {} for s in summaries]
    add("generation", "evaluation", ["failed: " + e["error"] if "error" in e else "evaluated" if e else None
                                     for e in evaluations])
    add("generation", "structures evaluated", [e.get("count") for e in evaluations])
    add("generation", "over all drawn samples",
        [(e.get("validity_over_drawn_samples") or {}).get("denominator") for e in evaluations])
    for key in _keys(e.get("metrics", {}) for e in evaluations):
        add("generation", key, [e.get("metrics", {}).get(key) for e in evaluations])
    for key in _keys((e.get("withheld_metrics") or {}).get("metrics", {}) for e in evaluations):
        add("generation", f"{key} (withheld: the hull's reference does not cover it)",
            [(e.get("withheld_metrics") or {}).get("metrics", {}).get(key) for e in evaluations])

    stages = [p.get("stages", {}) for p in provenance]
    for stage in _keys(stages):
        add("time", f"{stage} (s)", [(s.get(stage) or {}).get("wall_s") for s in stages])
    add("time", "all stages (s)", [round(sum((v or {}).get("wall_s") or 0 for v in s.values()), 1) if s else None
                                   for s in stages])

    add("version", "git commit", [p.get("git_commit") for p in provenance], mark=True)
    for package in _keys(p.get("versions", {}) for p in provenance):
        add("version", package, [p.get("versions", {}).get(package) for p in provenance], mark=True)
    return rows


def write_comparison(runs: list[Path], out: Path) -> Path:
    """``out/index.html`` and ``out/runs.csv`` (the folder replaced whole when complete)."""
    summaries = read_summaries(runs)
    rows = comparison_rows(summaries)
    names = _run_names(runs)
    with atomic_path(out) as folder:
        folder.mkdir(parents=True)
        (folder / "runs.csv").write_text(_csv(rows, names), encoding="utf-8")
        (folder / "index.html").write_text(_html(rows, names, runs), encoding="utf-8")
    return out / "index.html"


def _keys(dicts) -> list[str]:
    """Every key of the dicts, in first-seen order."""
    seen: dict[str, None] = {}
    for d in dicts:
        seen.update(dict.fromkeys(d))
    return list(seen)


def _interval(metrics: dict[str, Any], term: str) -> str | None:
    low, high = (metrics.get("delta_ci95") or {}).get(term) or (None, None)
    if low is None or high is None:
        return None
    reading = "lower" if high < 0 else "higher" if low > 0 else "no change"
    return f"[{low:.4f}, {high:.4f}] ({reading})"


def _run_names(runs: list[Path]) -> list[str]:
    """Folder names, or the paths where two runs share a name."""
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


def _csv(rows: list[Row], names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["section", "quantity", *names, DIFFERS])
    for row in rows:
        writer.writerow([row.section, row.quantity, *(cell_text(v) for v in row.values), "yes" if row.differs else ""])
    return buffer.getvalue()


STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222;font-size:14px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
th{background:#f2f2f2}tr.section th{background:#e4e4e4}tr.differs td{background:#fff3c4;font-weight:600}
.mark{color:#b35900}
"""


def _html(rows: list[Row], names: list[str], runs: list[Path]) -> str:
    e = html.escape
    head = "".join(f"<th title='{e(str(r.resolve()))}'>{e(n)}</th>" for n, r in zip(names, runs))
    body, section = [], None
    for row in rows:
        if row.section != section:
            section = row.section
            body.append(f"<tr class='section'><th colspan='{len(names) + 2}'>{e(section)}</th></tr>")
        mark = "<span class='mark'>&ne; differs</span>" if row.differs else ""
        cells = "".join(f"<td>{e(cell_text(v))}</td>" for v in row.values)
        body.append(f"<tr{' class=differs' if row.differs else ''}><td>{e(row.quantity)}</td>{cells}<td>{mark}</td></tr>")
    differing = [r.quantity for r in rows if r.differs and r.section == "setting"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>crygen: runs compared</title>"
            f"<style>{STYLE}</style></head><body><h1>Runs compared</h1>"
            f"<p>{len(runs)} runs. Settings that differ: {e(', '.join(differing) or 'none')}. Validation changes "
            "are fine-tuned minus base on each run's own held-out crystals; generation metrics are over each "
            "run's written structures (denominators in their rows).</p>"
            f"<table><thead><tr><th>quantity</th>{head}<th></th></tr></thead><tbody>{''.join(body)}</tbody></table>"
            "</body></html>")
