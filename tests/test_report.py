"""crygen/report (make report): a run's page from the run's files alone."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser

import ase.io
import pytest

from tests.helpers import error_line, make

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
