"""The report's figures, each a matplotlib figure returned as an inline SVG string."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any, Sequence

from crygen.evaluation.metrics import HULL_SUPPORT_KINDS, hull_stands_on

GENERATED, TRAINING = "#1f77b4", "#b0b0b0"
HULL_SUPPORT_COLOURS = dict(zip(HULL_SUPPORT_KINDS, ("#2ca02c", "#ff7f0e", "#d62728")))


def _figure(width: float = 6.4, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})  # text stays text: searchable, small
    return plt.subplots(figsize=(width, height))


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # no XML prologue inside HTML


def hull_support(row: dict[str, Any]) -> str | None:
    """What a structure's hull stands on, in words (None without an energy above hull)."""
    if row.get("energy_above_hull_per_atom") is None:
        return None
    return hull_stands_on(row.get("hull_compounds_in_system") or 0, row.get("hull_compounds_in_subsystems") or 0)


def energy_above_hull(rows: Sequence[dict[str, Any]], threshold: float) -> str:
    """Histogram of energies above hull, stacked by what each hull stands on, threshold drawn."""
    import numpy as np

    fig, ax = _figure()
    groups = {k: [r["energy_above_hull_per_atom"] for r in rows if hull_support(r) == k] for k in HULL_SUPPORT_COLOURS}
    values = [v for vs in groups.values() for v in vs]
    bins = np.histogram_bin_edges(values, bins=min(40, max(5, len(values) // 3))) if values else 10
    ax.hist([groups[k] for k in groups], bins=bins, stacked=True, color=list(HULL_SUPPORT_COLOURS.values()),
            label=[f"hull with {k} ({len(v)})" for k, v in groups.items()])
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.text(threshold, ax.get_ylim()[1] * 0.95, f" stable below {threshold} eV/atom", va="top", fontsize=8)
    ax.set_xlabel("energy above hull (eV/atom)")
    ax.set_ylabel("structures")
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig)


def _element_positions() -> dict[str, tuple[int, int]]:
    """Each element's (row, column) on a periodic table, lanthanides and actinides below."""
    from pymatgen.core.periodic_table import Element

    positions = {}
    for z in range(1, 104):
        el = Element.from_Z(z)
        if 57 <= z <= 71:
            positions[el.symbol] = (8, z - 57 + 3)
        elif 89 <= z <= 103:
            positions[el.symbol] = (9, z - 89 + 3)
        else:
            positions[el.symbol] = (el.row, el.group)
    return positions


def periodic_table(generated: Counter, training: Counter, n_generated: int, n_training: int) -> str:
    """Share of structures holding each element: generated (colour) against training (number below)."""
    import matplotlib.pyplot as plt

    fig, ax = _figure(9.0, 4.8)
    cmap = plt.get_cmap("Blues")
    top = max([generated[e] / n_generated for e in generated] or [1.0]) if n_generated else 1.0
    for symbol, (row, col) in _element_positions().items():
        share = generated[symbol] / n_generated if n_generated else 0.0
        train = training[symbol] / n_training if n_training else 0.0
        ax.add_patch(plt.Rectangle((col - 0.5, -row - 0.5), 0.95, 0.95, facecolor=cmap(0.1 + 0.9 * share / top)
                                   if share else "#f4f4f4", edgecolor="#999", linewidth=0.4))
        ax.text(col - 0.03, -row + 0.12, symbol, ha="center", va="center", fontsize=6.5,
                color="white" if share / top > 0.6 else "black")
        if share or train:
            ax.text(col - 0.03, -row - 0.22, f"{100 * share:.0f}|{100 * train:.0f}", ha="center", va="center",
                    fontsize=4.2, color="white" if share / top > 0.6 else "#333")
    ax.set_xlim(0.3, 18.7)
    ax.set_ylim(-9.7, -0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("% of structures holding each element: generated | training (colour: generated)", fontsize=8)
    return _svg(fig)


def side_by_side_counts(generated: Sequence[Any], training: Sequence[Any], xlabel: str, top: int | None = None) -> str:
    """Generated against training as shares of their structures, per value (the ``top`` commonest)."""
    import numpy as np

    fig, ax = _figure()
    g, t = Counter(generated), Counter(training)
    keys = [k for k, _ in (g + t).most_common(top)] if top else sorted(set(g) | set(t))
    x = np.arange(len(keys))
    ax.bar(x - 0.2, [g[k] / max(1, len(generated)) for k in keys], 0.4, color=GENERATED,
           label=f"generated ({len(generated)})")
    ax.bar(x + 0.2, [t[k] / max(1, len(training)) for k in keys], 0.4, color=TRAINING,
           label=f"training ({len(training)})")
    ax.set_xticks(x, [str(k) for k in keys], rotation=60 if top else 0, ha="right" if top else "center",
                  fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of structures")
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig)


def structure_picture(structure: Any) -> str:
    """The cell and its atoms, drawn by ASE (slightly turned, so that the cell reads as 3-D)."""
    from ase.visualize.plot import plot_atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    fig, ax = _figure(2.4, 2.4)
    plot_atoms(AseAtomsAdaptor.get_atoms(structure), ax, rotation="15x,25y,0z", radii=0.45, show_unit_cell=2)
    ax.axis("off")
    return _svg(fig)
