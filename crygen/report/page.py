"""The report's page: sections in the order a reader asks (what ran, did fine-tuning help, what
came out, is it stable, what is it made of, what to look at first, everything), as one HTML string."""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from crygen.evaluation.metrics import STABILITY_THRESHOLD
from crygen.report import RunFiles, cell_text, space_group
from crygen.report import figures as fig
from crygen.settings import run_settings

CANDIDATES = 8  # structure pictures shown
TABLE_COLUMNS = [  # (CSV column or derived key, heading)
    ("name", "name"), ("formula", "formula"), ("space_group", "space group"), ("num_atoms", "atoms"),
    ("energy_above_hull_per_atom", "E above hull (eV/atom)"), ("hull_support", "hull stands on"),
    ("stable", "stable"), ("unique", "unique"), ("novel", "novel"), ("sun", "S.U.N."),
    ("structure_validity", "structure valid"), ("comp_validity", "composition valid"),
    ("relax_steps", "relax steps"), ("relax_converged", "converged"), ("cif", "CIF"),
]

# MatterGen's published figures for its base model (trained on Alex-MP-20): the paper's Figs. 2e-2f
# and Table D4 (Zeni et al., Nature 2025), as MatterGen's README (v1.0.3) lists them. DFT
# relaxation and energies, stability against the Alex-MP-ICSD hull within 0.1 eV/atom.
MATTERGEN_PUBLISHED = {  # run metric: (label, published value, unit)
    "frac_novel_unique_stable_structures": ("S.U.N.", 38.57, "%"),
    "avg_rmsd_from_relaxation": ("RMSD from relaxation", 0.021, "Å"),
    "frac_stable_structures": ("stable", 74.41, "%"),
    "frac_unique_structures": ("unique", 100.0, "%"),
    "frac_novel_structures": ("novel", 61.96, "%"),
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222;font-size:14px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
th{background:#f2f2f2}#structures th{cursor:pointer}.note{color:#555;font-size:.92em}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #ddd;padding:4px;width:250px;font-size:.9em}
.card svg{width:240px;height:auto}.fig svg{max-width:100%;height:auto}
@media print{#filter{display:none}.card{break-inside:avoid}h2{break-after:avoid}}
"""

SCRIPT = """
const table=document.getElementById('structures');
if(table){table.querySelectorAll('th').forEach((th,i)=>th.addEventListener('click',()=>{
  const body=table.tBodies[0];const rows=[...body.rows];const up=th.dataset.order!=='up';
  table.querySelectorAll('th').forEach(h=>delete h.dataset.order);th.dataset.order=up?'up':'down';
  const key=r=>{const t=r.cells[i].dataset.v??r.cells[i].textContent;const n=parseFloat(t);return isNaN(n)?t:n;};
  rows.sort((a,b)=>{const x=key(a),y=key(b);if(x===y)return 0;
    if(typeof x!==typeof y)return (typeof x==='number'?-1:1)*(up?1:-1);return (x<y?-1:1)*(up?1:-1);});
  rows.forEach(r=>body.appendChild(r));}));
document.getElementById('filter').addEventListener('input',e=>{const q=e.target.value.toLowerCase();
  [...table.tBodies[0].rows].forEach(r=>{r.style.display=r.textContent.toLowerCase().includes(q)?'':'none';});});}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any, digits: int = 3) -> str:
    return _e(cell_text(value, "—", f"{{:.{digits}f}}"))


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    heads = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else _number(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"


class Markup(str):
    """HTML already escaped."""


def render(run: RunFiles, cif_names: list[str]) -> str:
    """The whole page."""
    groups = [space_group(s.lattice.matrix, s.frac_coords, [site.specie.Z for site in s]) for s in run.structures]
    for row, group, cif in zip(run.rows, groups, cif_names):
        row["space_group"], row["cif"], row["hull_support"] = group, cif, fig.hull_support(row)
    sections = [_run_card(run), _validation(run), _generation(run),  # the rest only where there is something
                _stability(run) if run.rows else "", _composition(run, groups) if run.structures else "",
                _candidates(run) if run.rows else "", _structure_table(run) if run.rows else "", _conditioning(run)]
    title = f"crygen run: {_e(run.root.name)}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>" + "".join(s for s in sections if s)
            + f"<script>{SCRIPT}</script></body></html>")


def _run_card(run: RunFiles) -> str:
    provenance = run.summary.get("provenance", {})
    settings = run_settings(provenance.get("settings", {}))
    versions = provenance.get("versions", {})
    stages = provenance.get("stages", {})
    card = [(k, v) for k, v in settings.items()] + [("device", run.generation.get("device")),
                                                    ("git commit", provenance.get("git_commit"))]
    return ("<h2>Run</h2><div class='cards'>" + _table(card, ("setting", "value"))
            + _table(list(versions.items()), ("package", "version"))
            + _table([(k, v.get("wall_s"), v.get("peak_rss_mb")) for k, v in stages.items()],
                     ("stage", "wall time (s)", "peak memory (MB)")) + "</div>")


def _validation(run: RunFiles) -> str:
    metrics = run.summary.get("metrics") or {}
    if not metrics.get("baseline"):
        return ""
    rows = []
    for term, base in metrics["baseline"].items():
        low, high = (metrics.get("delta_ci95") or {}).get(term, (None, None))
        verdict = ("lower (better) beyond its 95 % interval" if high is not None and high < 0 else
                   "higher (worse) beyond its 95 % interval" if low is not None and low > 0 else
                   "within its 95 % interval of no change")
        rows.append((term, base, metrics["finetuned"].get(term), metrics["delta"].get(term),
                     Markup(f"[{_number(low, 4)}, {_number(high, 4)}]"), verdict))
    return ("<h2>Validation: base against fine-tuned model</h2><p class='note'>MatterGen's denoising losses on "
            "the same held-out crystals, timesteps and noise for both models; lower is better. The interval is "
            "over the held-out structures (paired differences).</p>"
            + _table(rows, ("loss term", "base", "fine-tuned", "change", "change, 95 % interval", "reading")))


def _generation(run: RunFiles) -> str:
    evaluation = run.summary.get("generation_eval") or {}
    if "error" in evaluation or not evaluation:
        return ("<h2>Generated crystals</h2><p><b>Not evaluated:</b> "
                f"{_e(evaluation.get('error', 'no evaluation in summary.json'))}</p>")
    metrics = evaluation.get("metrics", {})
    drawn = evaluation.get("validity_over_drawn_samples", {})
    rows = [(k, v) for k, v in metrics.items()]
    rows += [(f"{k} (crygen)", v) for k, v in evaluation.get("additional_metrics", {}).items()
             if not isinstance(v, dict)]
    out = (f"<h2>Generated crystals</h2><p class='note'>{_e(evaluation.get('count'))} structures evaluated "
           f"({'relaxed' if run.relaxed else 'not relaxed'}); MatterGen's metrics over the written structures. "
           f"Over all drawn samples: {_e(drawn.get('denominator', ''))}.</p>" + _table(rows, ("metric", "value")))
    withheld = evaluation.get("withheld_metrics")
    out += _published_context(metrics, (withheld or {}).get("metrics", {}))
    if withheld:
        out += (f"<p><b>Stability metrics withheld from the plain numbers:</b> {_e(withheld.get('reason'))}</p>"
                + _table(list(withheld.get("metrics", {}).items()), ("withheld metric", "value")))
    return out


def _published_context(metrics: dict[str, Any], withheld: dict[str, Any]) -> str:
    """The run's values beside MatterGen's published ones for its base model."""
    rows = []
    for key, (label, published, unit) in MATTERGEN_PUBLISHED.items():
        value = metrics.get(key, withheld.get(key))
        shown = "—" if value is None else f"{100 * value:.1f}" if unit == "%" else f"{value:.3f}"
        if value is not None and key not in metrics:
            shown += " (withheld)"
        rows.append((label, unit, Markup(_e(shown)), Markup(_e(published))))
    return ("<p class='note'>Context, not a score: MatterGen's published figures for mattergen_base are another "
            "model's, on another reference (Alex-MP-ICSD) with DFT relaxation and energies (the MatterGen paper, "
            "Figs. 2e-2f and Table D4, as MatterGen's README lists them).</p>"
            + _table(rows, ("metric", "unit", "this run", "MatterGen base, published")))


def _stability(run: RunFiles) -> str:
    with_energy = [r for r in run.rows if r.get("energy_above_hull_per_atom") is not None]
    if not with_energy:
        return "<h2>Energy above hull</h2><p>No structure has an energy above hull (not relaxed, or not covered).</p>"
    counts = Counter(r["hull_support"] for r in with_energy)
    return ("<h2>Energy above hull</h2><p class='note'>After relaxation with the run's potential, against the "
            f"run's reference hull. {len(with_energy)} of {len(run.rows)} structures have one; their hulls stand "
            "on: " + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ". A hull of elements only makes almost "
            "any compound look stable.</p><div class='fig'>"
            + fig.energy_above_hull(with_energy, STABILITY_THRESHOLD) + "</div>")


def _composition(run: RunFiles, groups: list[str]) -> str:
    generated = [{el.symbol for el in s.composition.elements} for s in run.structures]
    from pymatgen.core.periodic_table import Element

    training = [{Element.from_Z(int(z)).symbol for z in numbers} for _, _, numbers in run.training_structures]
    train_groups = [space_group(c, f, n) for c, f, n in run.training_structures]
    out = ("<h2>Composition and symmetry: generated against training</h2><div class='fig'>"
           + fig.periodic_table(Counter(e for s in generated for e in s), Counter(e for s in training for e in s),
                                len(generated), len(training)) + "</div><div class='fig'>"
           + fig.side_by_side_counts([len(s) for s in run.structures], [len(n) for _, _, n in run.training_structures],
                                     "atoms per cell")
           + fig.side_by_side_counts([len(s) for s in generated], [len(s) for s in training], "number of elements")
           + fig.side_by_side_counts(groups, train_groups, "space group", top=15)
           + "</div>")
    return out


def _candidates(run: RunFiles) -> str:
    def rank(i: int):
        r = run.rows[i]
        e = r.get("energy_above_hull_per_atom")
        return (not r.get("sun"), not r.get("stable"), not r.get("novel_unique"), e if e is not None else float("inf"))

    chosen = sorted(range(len(run.rows)), key=rank)[:CANDIDATES]
    cards = []
    for i in chosen:
        r = run.rows[i]
        cards.append(f"<div class='card'>{fig.structure_picture(run.structures[i])}<br><b>{_e(r['formula'])}</b> "
                     f"{_e(r['space_group'])}<br>E above hull {_number(r.get('energy_above_hull_per_atom'))} eV/atom"
                     f"<br>{'S.U.N.' if r.get('sun') else 'stable' if r.get('stable') else ''} "
                     f"{'novel' if r.get('novel') else 'known'}, {'unique' if r.get('unique') else 'repeated'}"
                     f"<br><a href='{_e(r['cif'])}'>{_e(r['cif'].split('/')[-1])}</a></div>")
    return ("<h2>Most promising crystals</h2><p class='note'>Stable, unique and novel first, then stable, then novel "
            "and unique, then by energy above hull.</p><div class='cards'>" + "".join(cards) + "</div>")


def _structure_table(run: RunFiles) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for _, h in TABLE_COLUMNS)
    body = []
    for r in run.rows:
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = r.get(key)
            if key == "cif":
                cells.append(f"<td><a href='{_e(value)}'>CIF</a></td>")
            elif isinstance(value, float):
                cells.append(f"<td data-v='{value!r}'>{_number(value)}</td>")
            else:
                cells.append(f"<td>{_number(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<h2>Every structure</h2><p class='note'>Click a heading to sort; type to filter.</p>"
            "<input id='filter' placeholder='filter, e.g. a formula or an element'>"
            f"<table id='structures'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _conditioning(run: RunFiles) -> str:
    conditioning = run.summary.get("conditioning")
    if not conditioning:
        return ""
    settings = [("properties", ", ".join(conditioning.get("properties") or [])),
                ("condition", ", ".join(f"{k} = {v}" for k, v in (conditioning.get("condition") or {}).items())),
                ("guidance factor", conditioning.get("guidance"))]
    evaluation = run.summary.get("generation_eval") or {}
    rows = []
    for name, met in (evaluation.get("condition") or {}).items():
        if met.get("computable") is False:
            rows.append((name, met.get("target"), Markup("not measured"), met.get("note", "")))
        elif "frac_exact_system" in met:
            rows.append((name, met["target"], Markup(f"{100 * met['frac_exact_system']:.1f} %"),
                         f"exactly this system; {100 * met['frac_within_system']:.1f} % within it (its "
                         "subsystems included)"))
        elif "frac_matching" in met:
            rows.append((name, met["target"], Markup(f"{100 * met['frac_matching']:.1f} %"),
                         f"this space group, spglib at symprec {met.get('symprec')} Å"))
    met_table = (f"<p class='note'>How often the condition was met, over the {_e(evaluation.get('count'))} "
                 "generated structures evaluated:</p>" + _table(rows, ("property", "target", "met", "what counts"))
                 if rows else "<p class='note'>How often the condition was met: not evaluated.</p>")
    validation = conditioning.get("validation") or {}
    delta = (validation.get("conditioning") or {}).get("delta", {}).get("loss")
    return ("<h2>Property conditioning</h2>" + _table(settings, ("setting", "value")) + met_table
            + (f"<p class='note'>Validation loss with the condition fed minus without: {_number(delta, 4)} "
               "(negative: the model uses the condition).</p>" if delta is not None else ""))
