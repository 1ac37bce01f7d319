"""Property columns: what kind each is, how it is stored for MatterGen, how a condition on
it is read, and whether generated structures met it.

A property's definition (``properties.json`` in a prepared dataset, ``properties`` in a
model dir's ``crygen_model.json``) is its kind plus what generation checks a condition
against: ``float`` (range and statistics of the values), ``categorical`` (its labels; a
binary column of yes/no, true/false or 0/1 becomes ``["no", "yes"]``), ``chemical_system``
and ``space_group`` (both computed from the structure where the input has no value).
Values are stored as MatterGen's ``<split>/<name>.json``: floats, category indices (null
where missing, strict JSON; read back as the NaN on which MatterGen trains the unconditional
branch, see ``crygen.mattergen.configs.crystal_dataset_from_cache``), chemical-system strings and
space-group symbols.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from crygen.fileio import CrygenError, dumps_json
from crygen.mattergen.properties import CATEGORICAL, CHEMICAL_SYSTEM, FLOAT, SPACE_GROUP

MISSING_LABELS = {"", "nan", "na", "n/a", "none", "null"}
YES, NO = {"yes", "true", "1", "1.0", "y", "t"}, {"no", "false", "0", "0.0", "n", "f"}
MAX_CATEGORIES = 100  # more distinct labels than this is free text, not a category
SYMPREC = 0.1  # space-group tolerance (MatterGen's)


def parse_names(text: str | None) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return str(value).strip().lower() in MISSING_LABELS


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def space_group_of(structure) -> int:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number()


def chemical_system_of(structure) -> str:
    return structure.composition.chemical_system  # elements sorted, '-'-joined, as MatterGen's


def _space_group_number(value: Any) -> int | None:
    from pymatgen.symmetry.groups import SpaceGroup

    number = _as_float(value)
    if number is not None:
        return int(number) if number.is_integer() and 1 <= number <= 230 else None
    try:
        return SpaceGroup(str(value).strip()).int_number
    except Exception:  # pymatgen raises ValueError or KeyError for an unknown symbol
        return None


def _space_group_symbol(number: int) -> str:
    from pymatgen.symmetry.groups import SpaceGroup

    return SpaceGroup.from_int_number(number).symbol


# --------------------------------------------------------------------------- data


def attach_property_files(input_path: Path, entries: Sequence) -> None:
    """Values from files beside the structures of a folder input: ``properties.json``
    (``{property: {material_id: value}}``, pandas' ``to_json`` layout) and, for a folder of
    ``train.csv``/``val.csv``, per-split ``<split>/<property>.json`` (MatterGen's layout:
    ``{"values": [...]}`` or a list, in the order of that split's rows)."""
    input_path = Path(input_path)
    if not input_path.is_dir():
        return
    table = input_path / "properties.json"
    if table.is_file():
        data = _read_json(table)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise CrygenError(table, "expected {property: {material_id: value}}")
        for e in entries:
            for name, column in data.items():
                if e.material_id in column:
                    e.properties[name] = column[e.material_id]
    for split_dir in (input_path / s for s in ("train", "val")):
        split_entries = [e for e in entries if e.split == split_dir.name]
        for f in sorted(split_dir.glob("*.json")) if split_dir.is_dir() else []:
            data = _read_json(f)
            values = data.get("values") if isinstance(data, dict) else data
            if not isinstance(values, list) or len(values) != len(split_entries):
                raise CrygenError(f, f"expected {len(split_entries)} values (one per row of {split_dir.name}.csv)")
            for e, v in zip(split_entries, values):
                e.properties[f.stem] = v


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CrygenError(path, f"not valid JSON ({e.msg} at line {e.lineno})") from None


def define(name: str, values: Sequence[Any], source: Path) -> dict[str, Any]:
    """The definition of property ``name`` from its values (None where missing)."""
    if name == CHEMICAL_SYSTEM:
        return {"kind": CHEMICAL_SYSTEM}
    if name == SPACE_GROUP:
        return {"kind": SPACE_GROUP}
    present = [v for v in values if not is_missing(v)]
    if not present:
        raise CrygenError(source, f"property {name!r} has no values")
    # what the property's statistics stand on; a missing value is no category and no number
    counts = {"n_present": len(present), "n_missing": len(values) - len(present)}
    labels = {str(v).strip().lower() for v in present}
    if labels <= YES | NO and all(isinstance(v, (bool, str)) or _as_float(v) in (0.0, 1.0) for v in present):
        return {"kind": CATEGORICAL, "categories": ["no", "yes"], **counts}
    floats = [_as_float(v) for v in present]
    if all(f is not None and math.isfinite(f) for f in floats):
        import numpy as np

        arr = np.array(floats)
        return {"kind": FLOAT, "min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()),
                "std": float(arr.std()), **counts}
    categories = sorted({str(v).strip() for v in present})
    if len(categories) > MAX_CATEGORIES:
        raise CrygenError(source, f"property {name!r}: {len(categories)} distinct text values "
                                  f"(at most {MAX_CATEGORIES} categories; numbers must all parse as numbers)")
    return {"kind": CATEGORICAL, "categories": categories, **counts}


def encode(value: Any, definition: dict[str, Any], structure) -> Any:
    """One value as MatterGen's dataset stores it."""
    kind = definition["kind"]
    if kind == CHEMICAL_SYSTEM:
        return chemical_system_of(structure)
    if kind == SPACE_GROUP:
        number = None if is_missing(value) else _space_group_number(value)
        return _space_group_symbol(number or space_group_of(structure))
    if is_missing(value):
        return float("nan")
    if kind == FLOAT:
        return float(value)
    return float(definition["categories"].index(_category_label(value, definition)))


def _category_label(value: Any, definition: dict[str, Any]) -> str | None:
    """The category a value names, or None."""
    text = str(value).strip()
    if definition["categories"] == ["no", "yes"]:
        key = text.lower()
        return "yes" if key in YES else "no" if key in NO else None
    return text if text in definition["categories"] else None


def define_all(names: Sequence[str], entries: Sequence, source: Path) -> dict[str, dict[str, Any]]:
    """Definitions of the requested properties; a name with no value anywhere is an error
    that lists the columns the input has."""
    available = sorted({k for e in entries for k in e.properties})
    definitions = {}
    for name in names:
        if name not in (CHEMICAL_SYSTEM, SPACE_GROUP) and name not in available:
            raise CrygenError(source, f"property {name!r} not in the input (its property columns: "
                                      f"{', '.join(available) or 'none'}; computed: chemical_system, space_group)")
        definitions[name] = define(name, [e.properties.get(name) for e in entries], source)
    return definitions


def write_split_values(entries: Sequence, definitions: dict[str, dict[str, Any]], split_dir: Path) -> None:
    """MatterGen's ``<split>/<name>.json`` files, one value per structure in cache order."""
    for name, definition in definitions.items():
        values = [encode(e.properties.get(name), definition, e.structure) for e in entries]
        values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        (split_dir / f"{name}.json").write_text(dumps_json(
            {"values": values, "property_source_doc_id": name, "origins": None}, indent=None))


def values_present(entries: Sequence, definitions: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How many of ``entries`` have a value of each property (computed ones always do)."""
    return {name: sum(d["kind"] in (CHEMICAL_SYSTEM, SPACE_GROUP) or not is_missing(e.properties.get(name))
                      for e in entries) for name, d in definitions.items()}


def read_split_values(data_dir: Path, split: str, name: str) -> list:
    """One split's stored values, a missing one as NaN (as MatterGen holds it in memory)."""
    values = json.loads((Path(data_dir) / split / f"{name}.json").read_text())["values"]
    return [float("nan") if v is None else v for v in values]


# --------------------------------------------------------------------------- conditions


def parse_condition(text: str, definitions: dict[str, dict[str, Any]], source: Path) -> dict[str, Any]:
    """``name=value,...`` as the values MatterGen's sampler takes; every problem is a
    one-line error naming what the model allows."""
    condition: dict[str, Any] = {}
    if not definitions:
        raise CrygenError(source, "CONDITION given, but the model is conditioned on no properties "
                                  "(fine-tune with PROPERTIES, or sample a conditioned model)")
    known = ", ".join(f"{n} ({describe(d)})" for n, d in definitions.items())
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, raw = (s.strip() for s in part.partition("="))
        if not sep or not name or not raw:
            raise CrygenError(source, f"CONDITION {part!r}: expected name=value; the model knows {known}")
        if name not in definitions:
            raise CrygenError(source, f"CONDITION: the model was not trained on {name!r}; it knows {known}")
        condition[name] = _condition_value(name, raw, definitions[name], source)
    return condition


def describe(definition: dict[str, Any]) -> str:
    kind = definition["kind"]
    if kind == FLOAT:
        if "min" not in definition:  # a model crygen did not fine-tune records no range
            return "a positive number" if definition.get("positive") else "a number"
        return f"a number in {definition['min']:g} .. {definition['max']:g}"
    if kind == CATEGORICAL:
        return " or ".join(definition["categories"])
    if kind == CHEMICAL_SYSTEM:
        return "elements like Li-Fe-O"
    if kind == SPACE_GROUP:
        return "a space-group number 1..230 or symbol"
    return f"not settable by crygen ({definition.get('embedding', kind)})"


def _condition_value(name: str, raw: str, definition: dict[str, Any], source: Path) -> Any:
    kind = definition["kind"]
    wrong = f"CONDITION {name}={raw}: expected {describe(definition)}"
    if kind == FLOAT:
        value = _as_float(raw)
        if value is None or not math.isfinite(value):
            raise CrygenError(source, wrong)
        if definition.get("positive") and value <= 0:
            raise CrygenError(source, wrong)
        if "min" in definition and not definition["min"] <= value <= definition["max"]:
            raise CrygenError(source, f"{wrong} (outside the values it was trained on)")
        return value
    if kind == CATEGORICAL:
        label = _category_label(raw, definition)
        if label is None:
            raise CrygenError(source, wrong)
        return label
    if kind == CHEMICAL_SYSTEM:
        from pymatgen.core import Element

        from crygen.structures import generatable_elements

        symbols = [s.strip() for s in raw.split("-") if s.strip()]
        try:
            numbers = {Element(s).Z for s in symbols}
        except ValueError:
            raise CrygenError(source, f"{wrong} (not an element symbol)") from None
        if not symbols or not numbers <= generatable_elements():
            raise CrygenError(source, f"{wrong} (an element MatterGen cannot generate)")
        return "-".join(sorted(set(symbols)))
    if kind != SPACE_GROUP:
        raise CrygenError(source, wrong)
    number = _space_group_number(raw)
    if number is None:
        raise CrygenError(source, wrong)
    return number


# --------------------------------------------------------------------------- evaluation


def condition_report(structures: Sequence, condition: dict[str, Any]) -> dict[str, Any]:
    """How well generated structures met each conditioned property that a structure alone
    determines (chemical system, space group); the others are named as not computable."""
    report: dict[str, Any] = {}
    n = len(structures)
    for name, target in condition.items():
        if name == CHEMICAL_SYSTEM:
            wanted = set(str(target).split("-"))
            systems = [set(chemical_system_of(s).split("-")) for s in structures]
            report[name] = {
                "target": target,
                "frac_exact_system": sum(s == wanted for s in systems) / n,
                # the chemical system in the phase-diagram sense: its subsystems included
                "frac_within_system": sum(s <= wanted for s in systems) / n,
            }
        elif name == SPACE_GROUP:
            groups = [_safe_space_group(s) for s in structures]
            report[name] = {"target": target, "frac_matching": sum(g == int(target) for g in groups) / n,
                            "symprec": SYMPREC}
        else:
            report[name] = {"target": target, "computable": False,
                            "note": "not computable from a structure alone; check it with your own predictor"}
    return report


def _safe_space_group(structure) -> int | None:
    try:
        return space_group_of(structure)
    except Exception:  # spglib fails on degenerate generated cells: counted as not matching
        return None
