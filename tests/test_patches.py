"""crygen/patches.py: each patch of another library is declared once, applied in a scope, and
checked against the installed versions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from crygen import patches
from crygen.fileio import CrygenError

CRYGEN = Path(__file__).resolve().parents[1] / "crygen"
# crygen's own objects whose private state crygen's code sets (a ModelDir handing its read
# checkpoint to the one it writes)
OWN_OBJECTS = {"written"}


def test_every_patch_targets_what_is_installed():
    # an upgrade of MatterGen, CHGNet, SMACT or torch fails this test (and every stage) until
    # someone re-reads the replaced code and updates the declared version
    assert patches.version_problems() == []
    for patch in patches.PATCHES.values():
        if patch.kind == "provide":
            continue  # test_provided_modules_hold_every_name_mattergen_imports_from_them
        owner, attribute = patch.owner_and_attribute()
        assert hasattr(owner, attribute)
        if patch.replacement:
            assert callable(patches._resolve(patch.replacement)), patch.name


def test_provided_modules_hold_every_name_mattergen_imports_from_them():
    """Every ``from torch_scatter import ...`` (and torch_sparse) in the installed MatterGen's
    source, read with ast, names something crygen's plain module has."""
    import ast
    import importlib
    from pathlib import Path

    import mattergen

    provided = {p.target: importlib.import_module(p.replacement) for p in patches.PATCHES.values()
                if p.kind == "provide"}
    assert set(provided) == {"torch_scatter", "torch_sparse"}
    imported = {target: set() for target in provided}
    for source in Path(mattergen.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in provided:
                imported[node.module] |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & set(provided), source  # only from-imports are read
    assert imported["torch_scatter"] >= {"scatter", "scatter_add", "segment_csr", "segment_coo"}
    assert imported["torch_sparse"] >= {"SparseTensor"}
    for target, names in imported.items():
        assert all(hasattr(provided[target], name) for name in names), (target, names)


def test_a_version_other_than_the_one_read_stops_in_one_line(monkeypatch):
    monkeypatch.setattr(patches, "installed_version", lambda d: "9.9.9" if d == "mattergen" else None)
    with pytest.raises(CrygenError) as caught:
        patches.check_versions()
    message = str(caught.value)
    assert "\n" not in message and "mattergen 1.0.3" in message and "9.9.9 is installed" in message
    assert "more)" in message  # the count of the others, not a list


def test_a_replacement_lives_exactly_as_long_as_its_block():
    from mattergen.evaluation.metrics import structure

    before = structure.is_smact_valid
    with patches.applied("evaluation.is_smact_valid", evaluation__is_smact_valid=lambda s: "inner"):
        assert structure.is_smact_valid(None) == "inner"
        assert patches.original("evaluation.is_smact_valid") is before
        with patches.applied("evaluation.is_smact_valid", evaluation__is_smact_valid=lambda s: "nested"):
            assert structure.is_smact_valid(None) == "nested"
            assert patches.original("evaluation.is_smact_valid") is before  # the outer original
        assert structure.is_smact_valid(None) == "inner"
    assert structure.is_smact_valid is before
    assert patches.original("evaluation.is_smact_valid") is before  # the library's own, outside
    with pytest.raises(ZeroDivisionError), patches.applied("evaluation.is_smact_valid",
                                                           evaluation__is_smact_valid=lambda s: 0):
        1 / 0
    assert structure.is_smact_valid is before


def test_an_inherited_method_is_restored_by_removing_the_swap():
    from mattergen.common.gemnet.layers.efficient import EfficientInteractionBilinear

    held = "forward" in vars(EfficientInteractionBilinear)
    before = EfficientInteractionBilinear.forward
    with patches.applied("sampling.bilinear"):
        assert EfficientInteractionBilinear.forward is not before
    assert EfficientInteractionBilinear.forward is before
    assert ("forward" in vars(EfficientInteractionBilinear)) == held


def test_a_fill_only_preempts_a_cached_property():
    from mattergen.evaluation.reference.reference_dataset import ReferenceDataset

    reference = ReferenceDataset.from_entries("empty", [])
    patches.fill("reference.is_ordered", reference, True)
    assert reference.is_ordered is True
    with pytest.raises(CrygenError, match="not a cached property"):
        patches.fill("reference.is_ordered", object(), True)


def test_a_wrap_is_on_one_object_of_the_declared_class():
    from mattergen.diffusion.sampling.pc_sampler import PredictorCorrector

    sampler, other = PredictorCorrector.__new__(PredictorCorrector), PredictorCorrector.__new__(PredictorCorrector)
    patches.wrap("sampling.score_probe", sampler, lambda score_fn: (lambda x, t: ("probed", score_fn.__name__)))
    assert sampler._score_fn(None, None) == ("probed", "_score_fn")
    assert other._score_fn.__func__ is PredictorCorrector._score_fn  # the class and other samplers untouched
    with pytest.raises(CrygenError, match="is not a PredictorCorrector"):
        patches.wrap("sampling.score_probe", object(), lambda f: f)


def test_an_extension_is_added_once():
    from mattergen.common.utils.globals import PROPERTY_SOURCE_IDS

    patches.extend("model.property_source_ids", "crygen_test_property")
    patches.extend("model.property_source_ids", "crygen_test_property")
    try:
        assert PROPERTY_SOURCE_IDS.count("crygen_test_property") == 1
    finally:
        PROPERTY_SOURCE_IDS.remove("crygen_test_property")


def _assignments_to_other_libraries(tree: ast.AST) -> list[str]:
    """``x.attr = ...`` / ``setattr(...)`` / ``x.__dict__[...] = ...`` / registry writes, by line."""
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for t in targets:
            if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and t.value.attr == "__dict__":
                found.append(f"{node.lineno}: __dict__ write")
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in {
                    "torch", "structure", "metrics", "data_utils", "efficient"}:
                found.append(f"{node.lineno}: {t.value.id}.{t.attr} =")
            if (isinstance(t, ast.Attribute) and t.attr.startswith("_") and not t.attr.endswith("__")
                    and isinstance(t.value, ast.Name)
                    and t.value.id not in {"self", "cls"} and t.value.id not in OWN_OBJECTS):
                found.append(f"{node.lineno}: {t.value.id}.{t.attr} =")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
            found.append(f"{node.lineno}: setattr")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {"append"}
                and isinstance(node.func.value, ast.Name) and node.func.value.id.isupper()):
            found.append(f"{node.lineno}: {node.func.value.id}.append")
    return found


def test_no_module_patches_another_library_outside_patches_py():
    offenders = {}
    for path in sorted(CRYGEN.rglob("*.py")):
        if path.name == "patches.py":
            continue
        found = _assignments_to_other_libraries(ast.parse(path.read_text()))
        if found:
            offenders[str(path.relative_to(CRYGEN))] = found
    assert offenders == {}
