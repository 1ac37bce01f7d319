"""crygen/report (make report): a run's page from the run's files alone."""

from __future__ import annotations

import base64
import csv
import json
import re
from html.parser import HTMLParser

import ase.io
import pytest

from tests.helpers import assert_ok, error_line, make, only_job

pytestmark = pytest.mark.slow


class Page(HTMLParser):
    """What a browser would fetch or show: every src and href, the figures, the table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []  # src of any element, href of <link>
        self.links: list[str] = []  # href of <a>
        self.svg_shapes: list[int] = []  # drawn elements per top-level <svg>
        self.headings: list[str] = []
        self.structure_rows = 0
        self._svg_depth = 0
        self._in_h2 = False
        self._in_structures = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "src" in a or tag == "link":
            self.fetched.append(a.get("src") or a.get("href") or "")
        if tag == "a":
            self.links.append(a["href"])
        if tag == "svg":
            if self._svg_depth == 0:
                self.svg_shapes.append(0)
            self._svg_depth += 1
        elif self._svg_depth and tag in ("path", "use", "rect", "circle", "polygon", "text"):
            self.svg_shapes[-1] += 1
        self._in_h2 = tag == "h2"
        if tag == "table" and a.get("id") == "structures":
            self._in_structures = True
        if tag == "tr" and self._in_structures:
            self.structure_rows += 1

    def handle_endtag(self, tag):
        if tag == "svg":
            self._svg_depth -= 1
        if tag == "table":
            self._in_structures = False
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)


def test_make_report_writes_one_self_contained_page_of_the_runs_own_numbers(run_dir):
    from pymatgen.core import Structure

    index = run_dir / "report" / "index.html"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["report"] == str(index) and index.is_file()  # make pipeline ended with it
    proc = make("report", f"OUT={run_dir}")  # and make report writes it again
    assert f"report: {index}" in proc.stderr
    text = index.read_text()
    page = Page()
    page.feed(text)
    assert page.fetched == []  # nothing to fetch: no network, no file beside it but the CIFs
    assert page.headings == ["Run", "Validation: base against fine-tuned model", "Generated crystals",
                             "Energy above hull", "Composition and symmetry: generated against training",
                             "Most promising crystals", "Every structure"]
    # figures: hull, periodic table, atoms, elements, space groups, one picture per structure (2)
    assert len(page.svg_shapes) == 7 and min(page.svg_shapes) > 5, page.svg_shapes
    rows = list(csv.DictReader((run_dir / "generation" / "results" / "per_structure.csv").open()))
    assert page.structure_rows == len(rows) + 1 == 3  # the heading row and one per structure
    cifs = sorted({href for href in page.links if href.endswith(".cif")})
    assert len(cifs) == len(rows)
    formulas = sorted(Structure.from_file(index.parent / href).composition.reduced_formula for href in cifs)
    assert formulas == sorted(r["formula"] for r in rows)
    assert f"{summary['metrics']['baseline']['loss']:.3f}" in text
    assert f"{summary['metrics']['finetuned']['loss']:.3f}" in text
    assert "NaN" not in text.replace("isNaN", "")
    # MatterGen's published figures stand beside the run's, labelled as another model's
    assert "Context, not a score" in text and "<td>38.57</td>" in text


def test_report_of_a_folder_that_holds_no_run_is_a_one_line_error(tmp_path):
    proc = make("report", f"OUT={tmp_path}", check=False)
    assert proc.returncode != 0
    assert error_line(proc).startswith(f"report: error: {tmp_path / 'summary.json'}: no summary.json: run `make pipeline`")
    assert not (tmp_path / "report").exists()


def test_a_run_whose_evaluation_failed_gets_a_report_that_says_so(run_dir, tmp_path):
    """The pipeline records a failed evaluation in summary.json and goes on; so does the report,
    with the generated crystals' composition and CIFs, and no table of results it lacks."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir / "data", run / "data")
    shutil.copytree(run_dir / "generation" / "results", run / "generation" / "results")
    (run / "generation" / "results" / "per_structure.csv").unlink()
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["generation_eval"] = {"error": "evaluate_generated: the potential could not be loaded"}
    (run / "summary.json").write_text(json.dumps(summary))
    make("report", f"OUT={run}")
    text = (run / "report" / "index.html").read_text()
    page = Page()
    page.feed(text)
    assert page.headings == ["Run", "Validation: base against fine-tuned model", "Generated crystals",
                             "Composition and symmetry: generated against training"]
    assert "<b>Not evaluated:</b> evaluate_generated: the potential could not be loaded" in text
    generated = ase.io.read(run / "generation" / "results" / "generated_crystals.extxyz", ":")
    assert len(list((run / "report" / "cif").glob("*.cif"))) == len(generated) > 0
    assert page.fetched == []


# In the page: every top-level figure (SVG, canvas, image) with its drawn size and, for an SVG,
# how many shapes it draws.
FIGURES_JS = """[...document.querySelectorAll('svg, canvas, img')].filter(e => !e.parentElement.closest('svg'))
  .map(e => {const r = e.getBoundingClientRect();
             return {tag: e.tagName, width: r.width, height: r.height,
                     shapes: e.querySelectorAll('path, use, rect, circle, polygon, text').length};})"""
COLUMN_JS = """(() => {const t = document.getElementById('structures');
  const i = [...t.tHead.rows[0].cells].findIndex(c => c.textContent === %r);
  return [...t.tBodies[0].rows].map(r => r.cells[i].dataset.v ?? r.cells[i].textContent);})()"""
HEADING_AT_JS = """(() => {const th = [...document.querySelectorAll('#structures th')].find(c => c.textContent === %r);
  th.scrollIntoView({block: 'center'}); const r = th.getBoundingClientRect();
  return [r.left + r.width / 2, r.top + r.height / 2];})()"""
CIFS_JS = """Promise.all([...document.querySelectorAll('#structures a')].map(a =>
  fetch(a.href).then(r => r.text()).then(text => ({href: a.href, text}))))"""


def test_the_report_opens_offline_in_headless_chromium_and_its_table_sorts(run_dir):
    """Issue 20's check in a real browser: Debian's chromium, file://, network off. No console
    error and no request, every figure drawn, the table sorted by a real click on a heading (up,
    then down), the filter narrows it, every CIF link opens in the browser as its row's crystal,
    the page prints (to a PDF of two or more pages); a full-page screenshot is kept in the run folder."""
    from pymatgen.core import Structure

    from crygen.report.browser import HeadlessChromium
    from tests.helpers import require_programs

    require_programs("chromium", packages="chromium")
    index = run_dir / "report" / "index.html"
    rows = list(csv.DictReader((run_dir / "generation" / "results" / "per_structure.csv").open()))
    with HeadlessChromium() as browser:
        load_s = browser.open(index)
        figures = browser.evaluate(FIGURES_JS)
        assert len(figures) == 7, figures  # as the static test counts them
        assert all(f["width"] > 50 and f["height"] > 50 and f["shapes"] > 5 for f in figures), figures

        column = "E above hull (eV/atom)"
        energies = [float(v) for v in browser.evaluate(COLUMN_JS % column)]
        assert sorted(energies) == sorted(float(r["energy_above_hull_per_atom"]) for r in rows)
        browser.click(*browser.evaluate(HEADING_AT_JS % column))
        up = [float(v) for v in browser.evaluate(COLUMN_JS % column)]
        browser.click(*browser.evaluate(HEADING_AT_JS % column))
        down = [float(v) for v in browser.evaluate(COLUMN_JS % column)]
        assert up == sorted(energies) and down == sorted(energies, reverse=True)

        formula = rows[0]["formula"]
        browser.evaluate("document.getElementById('filter').focus()")
        browser.call("Input.insertText", text=formula)
        shown = browser.evaluate("[...document.querySelectorAll('#structures tbody tr')]"
                                 ".filter(r => r.style.display !== 'none').map(r => r.cells[1].textContent)")
        assert shown and set(shown) == {formula}

        cifs = browser.evaluate(CIFS_JS)
        browser.screenshot(run_dir / "report-screenshot.png")
        pdf = base64.b64decode(browser.call("Page.printToPDF", printBackground=False)["data"])  # as printed
        assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 2  # pages
        assert browser.errors == [] and browser.requests == []
    assert load_s < 10
    assert sorted(Structure.from_str(c["text"], fmt="cif").composition.reduced_formula for c in cifs) == sorted(
        r["formula"] for r in rows)
    png = (run_dir / "report-screenshot.png").read_bytes()
    assert png.startswith(b"\x89PNG") and int.from_bytes(png[16:20], "big") == 1280  # the window's width


def test_the_browser_check_sees_console_errors_and_requests(tmp_path):
    """The check above can fail: a page that logs an error, throws and fetches from the web is seen."""
    from crygen.report.browser import HeadlessChromium
    from tests.helpers import require_programs

    require_programs("chromium", packages="chromium")
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><img src='https://example.org/a.png'><script>console.error('boom');"
                    "undefinedFunction();</script>")
    with HeadlessChromium() as browser:
        browser.open(page)
    assert browser.requests == ["https://example.org/a.png"]
    assert "boom" in browser.errors and any("undefinedFunction" in e for e in browser.errors)


def test_a_conditioned_run_reports_how_often_its_condition_was_met(run_dir, tmp_path):
    """The report shows the evaluation's condition block: the share that met a chemical-system
    and a space-group condition, and a property no structure determines as not measured."""
    import shutil

    from crygen.properties import condition_report
    from crygen.report import RunFiles
    from crygen.report.page import render

    run = tmp_path / "run"
    for part in ("data", "generation/results"):
        shutil.copytree(run_dir / part, run / part)
    summary = json.loads((run_dir / "summary.json").read_text())
    files = RunFiles.read(run_dir)
    system = files.structures[0].composition.chemical_system
    condition = {"chemical_system": system, "space_group": 1, "band_gap": 1.5}
    summary["generation_eval"]["condition"] = met = condition_report(files.structures, condition)
    summary["conditioning"] = {"properties": list(condition), "condition": condition, "guidance": 2.0}
    (run / "summary.json").write_text(json.dumps(summary))
    text = render(RunFiles.read(run), [f"cif/{i}.cif" for i in range(len(files.structures))])
    assert "<h2>Property conditioning</h2>" in text
    assert f"<td>{100 * met['chemical_system']['frac_exact_system']:.1f} %</td>" in text
    assert f"<td>{100 * met['space_group']['frac_matching']:.1f} %</td>" in text
    assert "<td>band_gap</td><td>1.500</td><td>not measured</td>" in text
    assert f"over the {summary['generation_eval']['count']} generated structures" in text


def test_make_compare_sets_two_runs_side_by_side_and_marks_what_differs(run_dir, local_shell_run, tmp_path):
    """Issue 20: two real runs, EPOCHS=1 and, through the local shell, EPOCHS=2 (without
    relaxation, to keep it short): both are shown, EPOCHS and RELAX are marked as differing,
    NUM_GEN is not, and each run's validation change and generation metrics are its summary's."""
    assert_ok(local_shell_run[1])
    other = only_job(local_shell_run[0])[0] / "run"
    out = tmp_path / "compare"
    proc = make("compare", f"RUNS={run_dir} {other}", f"COMPARE_OUT={out}")
    assert f"compare: {out / 'index.html'}" in proc.stderr
    table = {(r["section"], r["quantity"]): r for r in csv.DictReader((out / "runs.csv").open())}
    assert run_dir.name == other.name == "run"
    names = [str(run_dir), str(other)]  # two runs of one name: the columns name their paths
    assert [table["setting", "EPOCHS"][n] for n in names] == ["1", "2"] and table["setting", "EPOCHS"]["differs"] == "yes"
    assert table["setting", "RELAX"]["differs"] == "yes" and table["setting", "NUM_GEN"]["differs"] == ""
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run_dir, other)]
    for name, s in zip(names, summaries):
        low, high = s["metrics"]["delta_ci95"]["loss"]
        assert table["validation", "loss: change, 95 % interval"][name].startswith(f"[{low:.4f}, {high:.4f}]")
        assert float(table["generation", "frac_unique_structures"][name]) == pytest.approx(
            s["generation_eval"]["metrics"]["frac_unique_structures"], abs=1e-4)
    assert table["generation", "avg_energy_above_hull_per_atom"][names[1]] == ""  # not relaxed: none
    text = (out / "index.html").read_text()
    assert "<tr class=differs><td>EPOCHS</td><td>1</td><td>2</td><td><span class='mark'>&ne; differs</span>" in text
    assert "Settings that differ: " in text and "EPOCHS" in text.split("Settings that differ: ")[1].split(".")[0]
    # too few runs, or a folder that holds no run: one line, nothing written
    bad = make("compare", f"RUNS={run_dir} {tmp_path / 'none'}", f"COMPARE_OUT={tmp_path / 'c2'}", check=False)
    assert bad.returncode != 0 and error_line(bad) == f"compare: error: {tmp_path / 'none'}: no such run folder"
    assert not (tmp_path / "c2").exists()
